//! One attempt on the network: resolve the receiver within the attempt's time, refuse
//! destinations inside the operator's network, and POST straight to the address checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::signing::signature;

/// The message recorded in the task's history for a refused destination. It says what is
/// wrong, not what the host resolved to: the history is the customer's to read, and the
/// addresses inside the operator's network are not.
pub const DESTINATION_NOT_ALLOWED: &str = "the callback destination is not allowed: callback_url \
     must resolve to public addresses only (set CALLBACK_ALLOW_PRIVATE_NETWORKS=true to allow \
     loopback, private and reserved ones)";

/// Why one attempt did not deliver.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("the receiver answered {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(String),
    /// The URL can never be delivered to (bad URL, forbidden address): no retry helps.
    #[error("{0}")]
    Refused(String),
}

/// Whether callbacks may not go to `ip`: loopback, private, link-local, shared (CGNAT),
/// benchmarking, reserved, multicast and unspecified addresses, and the IPv6 forms that
/// carry an IPv4 address a gateway would reach for us (mapped, compatible, NAT64, 6to4,
/// Teredo).
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    a == 0 // 0.0.0.0/8, "this network"
        || v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || (a == 100 && (64..128).contains(&b)) // 100.64.0.0/10, shared (CGNAT)
        || (a == 198 && (b & 0xfe) == 18) // 198.18.0.0/15, benchmarking
        || v4.is_multicast()
        || a >= 240 // 240.0.0.0/4, reserved, and the broadcast address
}

fn is_forbidden_v6(v6: Ipv6Addr) -> bool {
    // ::ffff:a.b.c.d is the IPv4 host itself: judge it by the IPv4 rules.
    if let Some(v4) = v6.to_ipv4_mapped() {
        return is_forbidden_v4(v4);
    }
    let s = v6.segments();
    s[..6] == [0; 6] // ::/96: unspecified, loopback, IPv4-compatible ::a.b.c.d
        || (s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] == [0; 4]) // 64:ff9b::/96, NAT64
        || (s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 0x0001) // 64:ff9b:1::/48, local NAT64
        || s[0] == 0x2002 // 2002::/16, 6to4
        || (s[0] == 0x2001 && s[1] == 0) // 2001::/32, Teredo
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7, unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10, link-local
        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10, site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00 // ff00::/8, multicast
}

/// What one attempt sends.
pub struct Attempt<'a> {
    pub url: &'a str,
    pub body: &'a str,
    pub delivery_id: &'a str,
    pub attempt: u32,
    pub secret: &'a str,
}

/// How attempts go out.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// For the whole attempt: resolving the host, connecting, and the answer.
    pub timeout: Duration,
    pub allow_private_networks: bool,
}

/// One POST; the status of a 2xx answer.
pub async fn post(a: &Attempt<'_>, policy: Policy) -> Result<u16, AttemptError> {
    let started = Instant::now();
    let url = url::Url::parse(a.url)
        .map_err(|e| AttemptError::Refused(format!("invalid callback_url: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(AttemptError::Refused(
            "callback_url must be http or https".into(),
        ));
    }
    let host = url
        .host_str()
        .ok_or_else(|| AttemptError::Refused("callback_url has no host".into()))?
        .to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    // The resolver can hang far longer than the attempt may take; a slow name server must
    // not hold a dispatcher slot beyond one attempt's timeout.
    let lookup = tokio::net::lookup_host((host.trim_matches(['[', ']']), port));
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(policy.timeout, lookup).await {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => {
            return Err(AttemptError::Transport(format!(
                "cannot resolve {host}: {e}"
            )))
        }
        Err(_) => {
            return Err(AttemptError::Transport(format!(
                "resolving {host} took longer than the attempt's {} ms",
                policy.timeout.as_millis()
            )))
        }
    };
    let Some(first) = addrs.first().copied() else {
        return Err(AttemptError::Transport(format!("{host} has no address")));
    };
    if !policy.allow_private_networks {
        if let Some(bad) = addrs.iter().find(|a| is_forbidden(a.ip())) {
            // The operator may see where it pointed; the customer's history does not.
            tracing::warn!(%host, address = %bad.ip(), "callback destination refused");
            return Err(AttemptError::Refused(DESTINATION_NOT_ALLOWED.into()));
        }
    }
    let remaining = policy
        .timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(1));
    // Pin the connection to the address just checked, so a second DNS answer cannot
    // redirect it to a forbidden one; and go direct, whatever HTTP(S)_PROXY says: a proxy
    // would reach the destination on its own network, past the check above.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(remaining)
        .resolve(&host, first)
        .user_agent(concat!("taskledger/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| AttemptError::Transport(e.to_string()))?;
    let now = chrono::Utc::now().timestamp();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("refonte-callback-auth", a.secret)
        .header(
            "refonte-callback-signature",
            signature(a.secret, now, a.body.as_bytes()),
        )
        .header("refonte-callback-id", a.delivery_id)
        .header("refonte-callback-attempt", a.attempt.to_string())
        .body(a.body.to_string())
        .send()
        .await
        .map_err(|e| AttemptError::Transport(e.to_string()))?;
    let status = response.status();
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(AttemptError::Status(status.as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(text: &str) -> bool {
        is_forbidden(text.parse().expect("an IP address"))
    }

    #[test]
    fn loopback_private_link_local_and_shared_ipv4_addresses_are_forbidden() {
        for ip in [
            "127.0.0.1",
            "127.255.255.254",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
        ] {
            assert!(forbidden(ip), "{ip}");
        }
    }

    #[test]
    fn benchmarking_reserved_multicast_and_broadcast_ipv4_addresses_are_forbidden() {
        for ip in [
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "250.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "239.255.255.255",
        ] {
            assert!(forbidden(ip), "{ip}");
        }
    }

    #[test]
    fn ipv6_loopback_unspecified_unique_local_link_local_and_multicast_are_forbidden() {
        for ip in [
            "::1", "::", "fd00::1", "fc00::1", "fe80::1", "febf::1", "fec0::1", "ff02::1",
        ] {
            assert!(forbidden(ip), "{ip}");
        }
    }

    #[test]
    fn ipv4_mapped_addresses_follow_the_ipv4_rules() {
        for ip in [
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:198.18.0.1",
            "::ffff:240.0.0.1",
        ] {
            assert!(forbidden(ip), "{ip}");
        }
        assert!(!forbidden("::ffff:93.184.216.34"));
    }

    #[test]
    fn ipv6_forms_that_embed_an_ipv4_address_are_forbidden() {
        for ip in [
            // IPv4-compatible ::a.b.c.d, public or not.
            "::127.0.0.1",
            "::93.184.216.34",
            // NAT64, well-known and local-use prefixes.
            "64:ff9b::127.0.0.1",
            "64:ff9b::5db8:d822",
            "64:ff9b:1::a00:1",
            // 6to4 and Teredo.
            "2002:7f00:1::1",
            "2002:5db8:d822::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        ] {
            assert!(forbidden(ip), "{ip}");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "64:ff9c::1",
        ] {
            assert!(!forbidden(ip), "{ip}");
        }
    }

    #[tokio::test]
    async fn a_refused_destination_is_reported_without_its_address() {
        let attempt = Attempt {
            url: "http://127.0.0.1:9/hook",
            body: "{}",
            delivery_id: "d",
            attempt: 1,
            secret: "s",
        };
        let policy = Policy {
            timeout: Duration::from_secs(5),
            allow_private_networks: false,
        };
        match post(&attempt, policy).await {
            Err(AttemptError::Refused(message)) => {
                assert_eq!(message, DESTINATION_NOT_ALLOWED);
                assert!(!message.contains("127.0.0.1"), "{message}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
