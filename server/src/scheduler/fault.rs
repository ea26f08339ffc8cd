//! Faults injected into the engine loop, so that supervision is tested against a real failing
//! step (`--fault-injection`, hidden, honoured by debug builds only; `main` refuses it in a
//! release build).

use ghostline_engine::EngineError;

/// Which steps fail, and how. Steps are the batched forwards, counted from 1.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum FaultInjection {
    #[default]
    None,
    /// Step K panics.
    PanicAt(u64),
    /// Step K returns an engine error.
    ErrorAt(u64),
    /// Every step panics (the engine cannot recover).
    PanicAlways,
}

impl std::str::FromStr for FaultInjection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let at = |k: &str| k.parse::<u64>().ok().filter(|&k| k > 0);
        let bad = || format!("unknown fault {s:?}: panic-at-step:K, error-at-step:K (K from 1) or panic-always");
        match s.split_once(':') {
            None if s == "panic-always" => Ok(FaultInjection::PanicAlways),
            None if s == "none" => Ok(FaultInjection::None),
            Some(("panic-at-step", k)) => at(k).map(FaultInjection::PanicAt).ok_or_else(bad),
            Some(("error-at-step", k)) => at(k).map(FaultInjection::ErrorAt).ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

impl FaultInjection {
    /// Called before the forward of step `step`: fails it when asked to.
    pub fn before_step(&self, step: u64) -> Result<(), EngineError> {
        match *self {
            FaultInjection::PanicAt(k) if k == step => panic!("injected fault: step {step} panics"),
            FaultInjection::PanicAlways => panic!("injected fault: step {step} panics"),
            FaultInjection::ErrorAt(k) if k == step => {
                Err(EngineError::Device(format!("injected fault: step {step} fails")))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_are_refused_by_name() {
        assert_eq!("panic-at-step:3".parse(), Ok(FaultInjection::PanicAt(3)));
        assert_eq!("error-at-step:1".parse(), Ok(FaultInjection::ErrorAt(1)));
        assert_eq!("panic-always".parse(), Ok(FaultInjection::PanicAlways));
        for bad in ["panic-at-step:0", "panic-at-step:x", "explode", ""] {
            assert!(bad.parse::<FaultInjection>().unwrap_err().contains("panic-at-step:K"), "{bad}");
        }
        assert!(FaultInjection::ErrorAt(2).before_step(1).is_ok());
        assert!(FaultInjection::ErrorAt(2).before_step(2).is_err());
        assert!(std::panic::catch_unwind(|| FaultInjection::PanicAt(1).before_step(1)).is_err());
    }
}
