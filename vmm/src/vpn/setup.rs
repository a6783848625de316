//! From the role's `[network.vpn]`, `--vpn-key` and the `--net` devices to
//! a tunnel, or a refusal to start: a role that forces a VPN never runs
//! with a network device outside it.

use std::net::IpAddr;
use std::path::Path;

use guest_policy::WireGuardConfig;

use super::key::{load_private_key, PrivateKey, VpnKeyError};
use super::tunnel::TunnelConfig;
use crate::config::NetConfig;

#[derive(Debug, thiserror::Error)]
pub enum VpnSetupError {
    #[error(
        "the role forces a WireGuard VPN to {endpoint}, but no --vpn-key was given; pass this \
         machine's private key file with --vpn-key FILE (`wg genkey > FILE`, mode 0600)"
    )]
    KeyMissing { endpoint: std::net::SocketAddr },
    #[error(transparent)]
    Key(#[from] VpnKeyError),
    #[error(
        "the role forces a WireGuard VPN, which securevm attaches to one network device; \
         give exactly one --net (got {0})"
    )]
    TooManyNets(usize),
    #[error(
        "--net {net}: the role's VPN gives this machine the tunnel address(es) {addresses}; \
         add ip=ADDRESS with one of them, the source the guest must use for tunnel traffic"
    )]
    NoTunnelAddress { net: String, addresses: String },
}

/// The tunnel to build: on `--net` number `net_index`, with `config`.
#[derive(Debug)]
pub struct VpnPlan {
    pub net_index: usize,
    pub config: TunnelConfig,
    pub key: PrivateKey,
}

/// Checks the VPN requirements of a role against the command line. `Ok(None)`:
/// no tunnel (no VPN in the role, or no network device it could protect).
pub fn plan_vpn(
    vpn: Option<&WireGuardConfig>,
    key_file: Option<&Path>,
    nets: &[NetConfig],
) -> Result<Option<VpnPlan>, VpnSetupError> {
    let Some(vpn) = vpn else {
        if key_file.is_some() {
            log::warn!("--vpn-key is ignored: the role has no [network.vpn] section");
        }
        return Ok(None);
    };
    if nets.is_empty() {
        // No network device, nothing that could leave outside the tunnel.
        return Ok(None);
    }
    let key_file = key_file.ok_or(VpnSetupError::KeyMissing {
        endpoint: vpn.endpoint,
    })?;
    let key = load_private_key(key_file)?;
    if nets.len() > 1 {
        return Err(VpnSetupError::TooManyNets(nets.len()));
    }
    let net = &nets[0];
    let guest_addresses: Vec<IpAddr> = net
        .addresses
        .iter()
        .copied()
        .filter(|address| vpn.addresses.iter().any(|net| net.contains(address)))
        .collect();
    if guest_addresses.is_empty() {
        return Err(VpnSetupError::NoTunnelAddress {
            net: net.to_string(),
            addresses: vpn
                .addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    log::info!(
        "vpn: tunnel to {}; this machine's WireGuard public key is {}",
        vpn.endpoint,
        key.public_key_base64()
    );
    Ok(Some(VpnPlan {
        net_index: 0,
        config: TunnelConfig {
            endpoint: vpn.endpoint,
            peer_public_key: vpn.peer_public_key,
            routes: vpn.routes.clone(),
            guest_addresses,
            persistent_keepalive: vpn.persistent_keepalive,
            guest_mac: net.effective_mac(),
        },
        key,
    }))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;

    fn vpn() -> WireGuardConfig {
        WireGuardConfig {
            endpoint: "198.51.100.2:51820".parse().unwrap(),
            peer_public_key: [9; 32],
            addresses: vec!["203.0.113.10/32".parse().unwrap()],
            routes: vec!["203.0.113.0/24".parse().unwrap()],
            persistent_keepalive: Some(25),
        }
    }

    fn key_file(name: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("securevm-vpn-setup-{name}-{}", std::process::id()));
        std::fs::write(&path, "wH8ZmucixAZfmOdsNaNth3ymtmTnI46DHE3cohF5+Ho=\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    fn net(spec: &str) -> NetConfig {
        spec.parse().unwrap()
    }

    #[test]
    fn a_vpn_role_needs_the_key() {
        let error = plan_vpn(Some(&vpn()), None, &[net("tap=t0,ip=203.0.113.10")]).unwrap_err();
        assert!(matches!(error, VpnSetupError::KeyMissing { .. }));
        assert!(error.to_string().contains("--vpn-key"), "{error}");
    }

    #[test]
    fn the_guest_must_own_a_tunnel_address() {
        let key = key_file("address");
        let error = plan_vpn(Some(&vpn()), Some(&key), &[net("tap=t0,ip=192.0.2.10")]).unwrap_err();
        assert!(error.to_string().contains("203.0.113.10/32"), "{error}");
        std::fs::remove_file(key).unwrap();
    }

    #[test]
    fn one_net_device_only() {
        let key = key_file("nets");
        let nets = [net("tap=t0,ip=203.0.113.10"), net("tap=t1,ip=203.0.113.10")];
        let error = plan_vpn(Some(&vpn()), Some(&key), &nets).unwrap_err();
        assert!(matches!(error, VpnSetupError::TooManyNets(2)));
        std::fs::remove_file(key).unwrap();
    }

    #[test]
    fn a_complete_setup_names_the_tunnel_addresses_the_guest_owns() {
        let key = key_file("ok");
        let nets = [net("tap=t0,ip=192.0.2.10,ip=203.0.113.10")];
        let plan = plan_vpn(Some(&vpn()), Some(&key), &nets).unwrap().unwrap();
        assert_eq!(plan.net_index, 0);
        assert_eq!(
            plan.config.guest_addresses,
            vec!["203.0.113.10".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(plan.config.guest_mac, nets[0].effective_mac());
        assert_eq!(plan.config.persistent_keepalive, Some(25));
        std::fs::remove_file(key).unwrap();
    }

    #[test]
    fn without_a_vpn_or_a_network_there_is_no_tunnel() {
        assert!(plan_vpn(None, None, &[net("tap=t0")]).unwrap().is_none());
        assert!(
            plan_vpn(None, Some(Path::new("/nonexistent")), &[net("tap=t0")])
                .unwrap()
                .is_none()
        );
        assert!(plan_vpn(Some(&vpn()), None, &[]).unwrap().is_none());
    }
}
