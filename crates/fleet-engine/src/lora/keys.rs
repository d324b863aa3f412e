//! LoRA key mapping: SGM (original Stable Diffusion / kohya sd-scripts) UNet module names to
//! diffusers ones, and the lookup key a module's weights are matched by.

/// Map an SGM (original Stable Diffusion / sd-scripts) UNet module name in underscore form to
/// the diffusers one, structurally (diffusers `_maybe_map_sgm_blocks_to_diffusers` +
/// `_convert_unet_lora_key`). `layers` is the UNet's `layers_per_block`.
pub fn sgm_to_diffusers(module: &str, layers: usize) -> Option<String> {
    let fixed = [
        ("time_embed_0", "time_embedding_linear_1"),
        ("time_embed_2", "time_embedding_linear_2"),
        ("label_emb_0_0", "add_embedding_linear_1"),
        ("label_emb_0_2", "add_embedding_linear_2"),
        ("input_blocks_0_0", "conv_in"),
        ("out_0", "conv_norm_out"),
        ("out_2", "conv_out"),
    ];
    for (from, to) in fixed {
        if module == from {
            return Some(to.into());
        }
    }
    let (kind, rest) = if let Some(r) = module.strip_prefix("input_blocks_") {
        ("in", r)
    } else if let Some(r) = module.strip_prefix("middle_block_") {
        ("mid", r)
    } else if let Some(r) = module.strip_prefix("output_blocks_") {
        ("out", r)
    } else {
        return None;
    };
    let mut it = rest.splitn(3, '_');
    let i: usize = it.next()?.parse().ok()?;
    let (inner, tail) = if kind == "mid" {
        (None, it.collect::<Vec<_>>().join("_"))
    } else {
        (Some(it.next()?.parse::<usize>().ok()?), it.next().unwrap_or("").to_string())
    };
    let per = layers + 1;
    let path = match (kind, inner) {
        ("in", Some(k)) if i >= 1 => {
            let (block, layer) = ((i - 1) / per, (i - 1) % per);
            if tail == "op" {
                return Some(format!("down_blocks_{block}_downsamplers_0_conv"));
            }
            match k {
                0 => format!("down_blocks_{block}_resnets_{layer}_{}", resnet_part(&tail)?),
                1 => format!("down_blocks_{block}_attentions_{layer}_{tail}"),
                _ => return None,
            }
        }
        ("mid", None) => {
            let (i, tail) = (i, tail);
            match i {
                0 => format!("mid_block_resnets_0_{}", resnet_part(&tail)?),
                1 => format!("mid_block_attentions_0_{tail}"),
                2 => format!("mid_block_resnets_1_{}", resnet_part(&tail)?),
                _ => return None,
            }
        }
        ("out", Some(k)) => {
            let (block, layer) = (i / per, i % per);
            // The upsampler is the block's last child: index 2 after an attention, 1 without.
            if tail == "conv" && k >= 1 {
                return Some(format!("up_blocks_{block}_upsamplers_0_conv"));
            }
            match k {
                0 => format!("up_blocks_{block}_resnets_{layer}_{}", resnet_part(&tail)?),
                1 => format!("up_blocks_{block}_attentions_{layer}_{tail}"),
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(path)
}

/// SGM `ResBlock` children → diffusers `ResnetBlock2D` ones.
fn resnet_part(tail: &str) -> Option<&'static str> {
    Some(match tail {
        "in_layers_0" => "norm1",
        "in_layers_2" => "conv1",
        "emb_layers_1" => "time_emb_proj",
        "out_layers_0" => "norm2",
        "out_layers_3" => "conv2",
        "skip_connection" => "conv_shortcut",
        _ => return None,
    })
}

/// Lookup key of a module: underscore form, without the text encoders' `text_model_` prefix
/// (transformers 5 checkpoints drop it; kohya keeps it).
pub(super) fn match_key(module_underscored: &str) -> String {
    let k = module_underscored.replace('.', "_");
    k.strip_prefix("text_model_").map(str::to_string).unwrap_or(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgm_names_map_onto_sdxl_diffusers_modules() {
        let m = |s: &str| sgm_to_diffusers(s, 2);
        assert_eq!(m("input_blocks_0_0").as_deref(), Some("conv_in"));
        assert_eq!(m("input_blocks_1_0_in_layers_2").as_deref(), Some("down_blocks_0_resnets_0_conv1"));
        assert_eq!(m("input_blocks_3_0_op").as_deref(), Some("down_blocks_0_downsamplers_0_conv"));
        assert_eq!(
            m("input_blocks_4_1_transformer_blocks_0_attn1_to_q").as_deref(),
            Some("down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q")
        );
        assert_eq!(m("input_blocks_4_0_skip_connection").as_deref(), Some("down_blocks_1_resnets_0_conv_shortcut"));
        assert_eq!(m("input_blocks_8_1_proj_in").as_deref(), Some("down_blocks_2_attentions_1_proj_in"));
        assert_eq!(m("middle_block_0_emb_layers_1").as_deref(), Some("mid_block_resnets_0_time_emb_proj"));
        assert_eq!(m("middle_block_1_proj_out").as_deref(), Some("mid_block_attentions_0_proj_out"));
        assert_eq!(m("middle_block_2_out_layers_3").as_deref(), Some("mid_block_resnets_1_conv2"));
        assert_eq!(m("output_blocks_0_0_out_layers_3").as_deref(), Some("up_blocks_0_resnets_0_conv2"));
        assert_eq!(m("output_blocks_2_2_conv").as_deref(), Some("up_blocks_0_upsamplers_0_conv"));
        assert_eq!(
            m("output_blocks_5_1_transformer_blocks_1_ff_net_2").as_deref(),
            Some("up_blocks_1_attentions_2_transformer_blocks_1_ff_net_2")
        );
        assert_eq!(m("output_blocks_8_0_skip_connection").as_deref(), Some("up_blocks_2_resnets_2_conv_shortcut"));
        assert_eq!(m("time_embed_2").as_deref(), Some("time_embedding_linear_2"));
        assert_eq!(m("label_emb_0_0").as_deref(), Some("add_embedding_linear_1"));
        assert_eq!(m("out_2").as_deref(), Some("conv_out"));
        assert_eq!(m("input_blocks_1_0_nonsense"), None);
        assert_eq!(m("middle_block_3_proj_in"), None);
    }
}
