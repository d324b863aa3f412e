//! End-to-end tests: one binary, one module per area. They need the services that
//! `scripts/services.sh` starts (the README's test command runs it first).

mod browser;
mod bulk;
mod chaos;
mod connectivity;
mod console;
mod dead_letters;
mod fair_share;
mod fleet;
mod img2img;
mod lora_url;
mod outages;
mod quickstart;
mod recover;
mod results;
mod sentinel;
mod storage;
mod wire;
