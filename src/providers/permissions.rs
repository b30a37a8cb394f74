//! Which required permissions a credential lacks, each provider comparing in its own
//! vocabulary ([`ProviderApi::satisfies`]).

use std::collections::BTreeSet;

use super::rules::ProviderApi;

/// Required permissions that `granted` does not satisfy, sorted, in each provider's
/// vocabulary ([`ProviderApi::satisfies`]):
/// - procore: `<tool>:<level>` is satisfied by the same tool at that level or higher
///   (none < read_only < standard < admin); `company:<id>` and `project:<id>` by equality.
/// - microsoft: every entry compares case-insensitively: permission names (Entra treats them
///   so) and `site:<id>` (a Graph site id is a host name and two GUIDs, none case-sensitive).
/// - salesforce: `permission:<field>` compares case-insensitively (SOQL field names are
///   case-insensitive); scopes by equality.
/// - everything else: plain set difference.
pub(crate) fn missing<P: ProviderApi>(
    api: &P,
    granted: &BTreeSet<String>,
    required: &BTreeSet<String>,
) -> Vec<String> {
    required
        .iter()
        .filter(|r| !granted.contains(r.as_str()) && !api.satisfies(granted, r))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Provider;
    use crate::providers::missing_permissions;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn procore_higher_tool_level_satisfies_lower() {
        let granted = set(&["documents:admin", "budget:read_only", "company:1"]);
        let required = set(&["documents:standard", "documents:read_only", "company:1"]);
        assert!(missing_permissions(Provider::Procore, &granted, &required).is_empty());
    }

    #[test]
    fn procore_lower_tool_level_does_not_satisfy_higher() {
        let granted = set(&["budget:read_only", "documents:standard"]);
        let required = set(&["budget:standard", "documents:admin", "rfi:none"]);
        assert_eq!(
            missing_permissions(Provider::Procore, &granted, &required),
            vec!["budget:standard", "documents:admin"]
        );
    }

    #[test]
    fn procore_companies_and_projects_compare_by_equality() {
        let granted = set(&["company:1", "project:7"]);
        let required = set(&["company:2", "project:7", "project:8"]);
        assert_eq!(
            missing_permissions(Provider::Procore, &granted, &required),
            vec!["company:2", "project:8"]
        );
    }

    #[test]
    fn microsoft_permission_names_compare_case_insensitively() {
        let granted = set(&["Sites.ReadWrite.All", "site:root"]);
        let required = set(&["sites.readwrite.all", "site:root", "Files.Read.All"]);
        assert_eq!(
            missing_permissions(Provider::Microsoft, &granted, &required),
            vec!["Files.Read.All"]
        );
    }

    #[test]
    fn salesforce_permission_fields_compare_case_insensitively_scopes_exactly() {
        let granted = set(&["api", "permission:PermissionsApiEnabled"]);
        let required = set(&["permission:permissionsapienabled", "API", "refresh_token"]);
        assert_eq!(
            missing_permissions(Provider::Salesforce, &granted, &required),
            vec!["API", "refresh_token"]
        );
    }

    #[test]
    fn scope_providers_use_plain_set_difference() {
        let granted = set(&["files.read", "account_info.read"]);
        let required = set(&["files.read", "files.write"]);
        for provider in [Provider::Dropbox, Provider::Google, Provider::OAuth2] {
            assert_eq!(
                missing_permissions(provider, &granted, &required),
                vec!["files.write"]
            );
        }
        assert!(missing_permissions(Provider::Simpro, &granted, &BTreeSet::new()).is_empty());
    }
}
