//! Which connection attributes the configured rules read, so the host fetches only those.

use super::{ConditionKey, Operation, Policies, Source, TokenRequirement};

/// The connection attributes some rule reads. The host asks Envoy for each only when one does:
/// every property read is a call out of the VM and a copy, on every request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionReads {
    /// `destination.port` (`ports`, `notPorts`, the `destination.port` key).
    pub destination_port: bool,
    /// `source.address` (`ipBlocks`, `remoteIpBlocks` and their keys: without `X-Forwarded-For`
    /// the remote address is the peer's).
    pub source_address: bool,
    /// The peer certificate's names (`principals`, `namespaces`, `serviceAccounts`,
    /// `trustDomains` and the `source.principal` / `source.namespace` keys).
    pub peer_certificate: bool,
    /// `connection.sni`.
    pub requested_server_name: bool,
    /// `destination.ip` (`destination.address`).
    pub destination_address: bool,
}

impl ConnectionReads {
    /// What `policies` and `requirements` read, whatever the request.
    pub fn of(policies: &Policies, requirements: &[TokenRequirement]) -> ConnectionReads {
        let mut reads = ConnectionReads::default();
        let rules = policies.deny.iter().chain(&policies.allow).chain(&policies.audit).flat_map(|p| &p.rules);
        for rule in rules {
            rule.from.iter().for_each(|source| reads.add_source(source));
            rule.to.iter().for_each(|operation| reads.add_operation(operation));
            rule.when.iter().for_each(|condition| reads.add_key(&condition.key));
        }
        requirements.iter().for_each(|requirement| reads.add_operation(&requirement.matcher));
        reads
    }

    // The destructuring below is exhaustive on purpose: a new field that reads the connection must
    // be added here, or it would always see "unknown".
    fn add_source(&mut self, source: &Source) {
        let Source {
            request_principals: _,
            not_request_principals: _,
            principals,
            not_principals,
            namespaces,
            not_namespaces,
            service_accounts,
            not_service_accounts,
            trust_domains,
            not_trust_domains,
            ip_blocks,
            not_ip_blocks,
            remote_ip_blocks,
            not_remote_ip_blocks,
        } = source;
        self.source_address |=
            [ip_blocks, not_ip_blocks, remote_ip_blocks, not_remote_ip_blocks].iter().any(|blocks| !blocks.is_empty());
        self.peer_certificate |= [
            principals,
            not_principals,
            namespaces,
            not_namespaces,
            service_accounts,
            not_service_accounts,
            trust_domains,
            not_trust_domains,
        ]
        .iter()
        .any(|matches| !matches.is_empty());
    }

    fn add_operation(&mut self, operation: &Operation) {
        let Operation { hosts: _, not_hosts: _, ports, not_ports, methods: _, not_methods: _, paths: _, not_paths: _ } =
            operation;
        self.destination_port |= !ports.is_empty() || !not_ports.is_empty();
    }

    fn add_key(&mut self, key: &ConditionKey) {
        match key {
            ConditionKey::SourceIp | ConditionKey::RemoteIp => self.source_address = true,
            ConditionKey::DestinationPort => self.destination_port = true,
            ConditionKey::SourcePrincipal | ConditionKey::SourceNamespace => self.peer_certificate = true,
            ConditionKey::ConnectionSni => self.requested_server_name = true,
            ConditionKey::DestinationIp => self.destination_address = true,
            ConditionKey::Claim(_)
            | ConditionKey::Principal
            | ConditionKey::Audiences
            | ConditionKey::Presenter
            | ConditionKey::Header(_) => {}
        }
    }
}
