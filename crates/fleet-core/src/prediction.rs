//! What a model's UNet predicts: the one list every crate reads (the engine's scheduler, the
//! configuration's `models.<name>.prediction_type`, `fleet generate --prediction-type`).

use serde::{Deserialize, Serialize};

/// What the UNet predicts (diffusers' `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The noise ε (SDXL, Lightning 2/4/8-step).
    Epsilon,
    /// The denoised sample x0 (Lightning 1-step `_x0` checkpoint).
    #[serde(alias = "original_sample")]
    Sample,
    /// v-prediction.
    VPrediction,
}

impl PredictionType {
    /// The name diffusers' `scheduler_config.json` uses.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Epsilon => "epsilon",
            Self::Sample => "sample",
            Self::VPrediction => "v_prediction",
        }
    }
}

/// A name that is no prediction type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown prediction type {0:?} (expected epsilon, sample or v_prediction)")]
pub struct UnknownPredictionType(pub String);

impl std::str::FromStr for PredictionType {
    type Err = UnknownPredictionType;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "epsilon" => Ok(Self::Epsilon),
            "sample" | "original_sample" | "x0" => Ok(Self::Sample),
            "v_prediction" | "v" => Ok(Self::VPrediction),
            other => Err(UnknownPredictionType(other.to_owned())),
        }
    }
}

impl std::fmt::Display for PredictionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases_parse() {
        for p in [PredictionType::Epsilon, PredictionType::Sample, PredictionType::VPrediction] {
            assert_eq!(p.as_str().parse::<PredictionType>(), Ok(p));
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        assert_eq!("x0".parse::<PredictionType>(), Ok(PredictionType::Sample));
        assert_eq!(serde_json::from_str::<PredictionType>("\"original_sample\"").unwrap(), PredictionType::Sample);
        assert!("flow".parse::<PredictionType>().unwrap_err().to_string().contains("v_prediction"));
    }
}
