//! One module per subcommand (the job-reading commands share `jobs`).

pub mod bulk;
pub mod config;
pub mod dispatcher;
pub mod from_image;
pub mod generate;
pub mod generate_jobs;
pub mod jobs;
pub mod recover;
pub mod submit;
pub mod up;
pub mod usage;
pub mod validate;
pub mod wait;
pub mod worker;
