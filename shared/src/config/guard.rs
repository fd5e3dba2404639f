//! What the gateway does about prompt injection and personal data, and the operator's system
//! prompt: set gateway-wide (`[guard]`), per model (`[models.NAME.guard]`) and per key (the
//! key's `guard`). Of a model's and a key's policy the stricter applies; the gateway's applies
//! when neither sets one. System prompts add up: the gateway's, the model's, then the key's.

use serde::{Deserialize, Serialize};

/// What to do when a scanned text trips an injection rule.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum InjectionPolicy {
    Off,
    /// Answer, with an `x-gateway-guard` header naming the rules, and count it.
    #[default]
    Flag,
    /// Refuse with 400 `prompt_injection_detected`, naming the rule.
    Block,
}

/// What to do with personal data found in a request. Ordered from least to most strict.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PiiPolicy {
    #[default]
    Off,
    /// Providers see the text; caches, logs and batch files do not.
    RedactLogs,
    /// Replaced by placeholders before the provider sees it.
    Redact,
    /// Refused with 400 `pii_detected`, naming the kind.
    Block,
}

/// One level of guard settings; every field optional so levels can be layered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injection: Option<InjectionPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pii: Option<PiiPolicy>,
    /// With `pii = "redact"`: put the original values back into the answer the client gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_pii: Option<bool>,
    /// Operator instructions, always sent first, before anything the client sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
}

impl GuardSettings {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The policy one request runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveGuard<'a> {
    pub injection: InjectionPolicy,
    pub pii: PiiPolicy,
    pub restore_pii: bool,
    /// In the order they are sent, before the client's messages.
    pub system_prompts: Vec<&'a str>,
}

impl<'a> EffectiveGuard<'a> {
    /// Layers the gateway's defaults, the model's and the key's settings.
    pub fn resolve(
        gateway: &'a GuardSettings,
        model: Option<&'a GuardSettings>,
        key: &'a GuardSettings,
    ) -> Self {
        let levels = [model, Some(key)];
        let injection = strictest(&levels, gateway, |level| level.injection);
        let pii = strictest(&levels, gateway, |level| level.pii);
        let restore_pii = levels
            .iter()
            .flatten()
            .filter_map(|level| level.restore_pii)
            .next_back()
            .or(gateway.restore_pii)
            .unwrap_or(false);
        let system_prompts = [Some(gateway), model, Some(key)]
            .into_iter()
            .flatten()
            .filter_map(|level| level.system_prompt.as_deref())
            .filter(|prompt| !prompt.trim().is_empty())
            .collect();
        Self {
            injection,
            pii,
            restore_pii,
            system_prompts,
        }
    }
}

/// The strictest policy the model and the key set, else the gateway's, else the default.
fn strictest<T: Ord + Default>(
    levels: &[Option<&GuardSettings>],
    gateway: &GuardSettings,
    pick: fn(&GuardSettings) -> Option<T>,
) -> T {
    levels
        .iter()
        .flatten()
        .filter_map(|level| pick(level))
        .max()
        .or_else(|| pick(gateway))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stricter_of_model_and_key_applies_and_the_gateway_fills_in() {
        let gateway = GuardSettings {
            injection: Some(InjectionPolicy::Off),
            pii: Some(PiiPolicy::RedactLogs),
            system_prompt: Some("gateway".into()),
            ..GuardSettings::default()
        };
        let model = GuardSettings {
            injection: Some(InjectionPolicy::Block),
            system_prompt: Some("model".into()),
            ..GuardSettings::default()
        };
        let key = GuardSettings {
            injection: Some(InjectionPolicy::Flag),
            system_prompt: Some("key".into()),
            ..GuardSettings::default()
        };
        let effective = EffectiveGuard::resolve(&gateway, Some(&model), &key);
        assert_eq!(effective.injection, InjectionPolicy::Block);
        assert_eq!(effective.pii, PiiPolicy::RedactLogs);
        assert_eq!(effective.system_prompts, ["gateway", "model", "key"]);
        let defaults = GuardSettings::default();
        let plain = EffectiveGuard::resolve(&defaults, None, &defaults);
        assert_eq!(plain.injection, InjectionPolicy::Flag);
        assert_eq!(plain.pii, PiiPolicy::Off);
        assert!(!plain.restore_pii && plain.system_prompts.is_empty());
    }
}
