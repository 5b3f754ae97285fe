//! RADIUS Accounting packets (RFC 2866) as homecmp reads and answers them.
//!
//! Attributes are decoded by `radius-parser`; what it leaves to us is here:
//! the Request Authenticator check (an MD5 over the packet and the shared
//! secret, compared in constant time), the attributes it files as unknown
//! (Acct-Status-Type, Acct-Session-Id, Framed-IPv6-Prefix), vendor
//! sub-attributes, and the two packets we write: the Accounting-Response,
//! and an Accounting-Request for tests, benches and the fuzz corpus.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv6Net};
use md5::{Digest, Md5};
use radius_parser::{RadiusAttribute, RadiusCode, parse_radius_data};

/// Largest RADIUS packet (RFC 2865 §3).
pub const MAX_PACKET: usize = 4096;
const HEADER: usize = 20;

pub const ACCOUNTING_REQUEST: u8 = 4;
pub const ACCOUNTING_RESPONSE: u8 = 5;

/// Attribute types we read or write.
pub mod attr {
    pub const USER_NAME: u8 = 1;
    pub const FRAMED_IP_ADDRESS: u8 = 8;
    pub const VENDOR_SPECIFIC: u8 = 26;
    pub const CALLING_STATION_ID: u8 = 31;
    pub const ACCT_STATUS_TYPE: u8 = 40;
    /// RFC 2866 §5.2: seconds the client has been trying to send this record.
    pub const ACCT_DELAY_TIME: u8 = 41;
    pub const ACCT_SESSION_ID: u8 = 44;
    /// RFC 2869 §5.3: when the event happened on the NAS, Unix seconds.
    pub const EVENT_TIMESTAMP: u8 = 55;
    pub const FRAMED_IPV6_PREFIX: u8 = 97;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Start,
    Stop,
    Interim,
    AccountingOn,
    AccountingOff,
    Other(u32),
}

impl Status {
    fn from_value(value: u32) -> Self {
        match value {
            1 => Status::Start,
            2 => Status::Stop,
            3 => Status::Interim,
            7 => Status::AccountingOn,
            8 => Status::AccountingOff,
            other => Status::Other(other),
        }
    }

    pub fn value(self) -> u32 {
        match self {
            Status::Start => 1,
            Status::Stop => 2,
            Status::Interim => 3,
            Status::AccountingOn => 7,
            Status::AccountingOff => 8,
            Status::Other(other) => other,
        }
    }
}

/// Where the MSISDN is: `calling-station-id` (3GPP TS 29.061's choice),
/// `user-name`, or a vendor attribute `vendor:<vendor id>:<type>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsisdnAttribute {
    CallingStationId,
    UserName,
    Vendor { vendor: u32, kind: u8 },
}

impl std::str::FromStr for MsisdnAttribute {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "calling-station-id" => Ok(Self::CallingStationId),
            "user-name" => Ok(Self::UserName),
            _ => {
                let mut parts = text.split(':');
                match (parts.next(), parts.next(), parts.next(), parts.next()) {
                    (Some("vendor"), Some(vendor), Some(kind), None) => {
                        match (vendor.parse(), kind.parse()) {
                            (Ok(vendor), Ok(kind)) => Ok(Self::Vendor { vendor, kind }),
                            _ => Err(format!("{text:?}: vendor:<vendor id>:<type 0-255>")),
                        }
                    }
                    _ => Err(format!(
                        "{text:?}: calling-station-id, user-name or vendor:<vendor id>:<type>"
                    )),
                }
            }
        }
    }
}

/// Why a datagram is not an Accounting-Request we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("shorter than its header or its Length")]
    Truncated,
    #[error("not an Accounting-Request (code {0})")]
    NotAccountingRequest(u8),
    #[error("the Request Authenticator does not match the shared secret")]
    BadAuthenticator,
    #[error("malformed attributes")]
    Malformed,
}

impl PacketError {
    /// The `reason` label of the drop counter.
    pub fn label(self) -> &'static str {
        match self {
            PacketError::Truncated => "truncated",
            PacketError::NotAccountingRequest(_) => "not_accounting",
            PacketError::BadAuthenticator => "bad_authenticator",
            PacketError::Malformed => "malformed",
        }
    }
}

/// The header of a datagram that could be an Accounting-Request: the
/// packet without the padding past its Length.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    pub packet: &'a [u8],
    pub identifier: u8,
    pub authenticator: [u8; 16],
}

impl<'a> Header<'a> {
    pub fn read(datagram: &'a [u8]) -> Result<Self, PacketError> {
        if datagram.len() < HEADER {
            return Err(PacketError::Truncated);
        }
        if datagram[0] != ACCOUNTING_REQUEST {
            return Err(PacketError::NotAccountingRequest(datagram[0]));
        }
        let length = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
        if !(HEADER..=MAX_PACKET).contains(&length) || length > datagram.len() {
            return Err(PacketError::Truncated);
        }
        Ok(Self {
            packet: &datagram[..length],
            identifier: datagram[1],
            authenticator: datagram[4..HEADER].try_into().expect("16 bytes"),
        })
    }

    /// RFC 2866 §3: MD5(Code, Identifier, Length, 16 zero octets,
    /// attributes, secret) must be the authenticator.
    pub fn verify(&self, secret: &[u8]) -> Result<(), PacketError> {
        let expected = request_authenticator(self.packet, secret);
        aws_lc_rs::constant_time::verify_slices_are_equal(&expected, &self.authenticator)
            .map_err(|_| PacketError::BadAuthenticator)
    }

    /// The attributes of a verified packet.
    pub fn attributes(&self) -> Result<Request<'a>, PacketError> {
        let (_, data) = parse_radius_data(self.packet).map_err(|_| PacketError::Malformed)?;
        if data.code != RadiusCode::AccountingRequest {
            return Err(PacketError::Malformed);
        }
        Ok(Request {
            attributes: data.attributes.unwrap_or_default(),
        })
    }

    /// The Accounting-Response to this request (no attributes).
    pub fn response(&self, secret: &[u8]) -> Vec<u8> {
        let mut packet = vec![ACCOUNTING_RESPONSE, self.identifier, 0, HEADER as u8];
        packet.extend_from_slice(&self.authenticator);
        let mut md5 = Md5::new();
        md5.update(&packet);
        md5.update(secret);
        packet[4..HEADER].copy_from_slice(&md5.finalize());
        packet
    }
}

fn request_authenticator(packet: &[u8], secret: &[u8]) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update(&packet[..4]);
    md5.update([0u8; 16]);
    md5.update(&packet[HEADER..]);
    md5.update(secret);
    md5.finalize().into()
}

/// The attributes of an Accounting-Request.
#[derive(Debug)]
pub struct Request<'a> {
    attributes: Vec<RadiusAttribute<'a>>,
}

impl<'a> Request<'a> {
    fn unknown(&self, kind: u8) -> Option<&'a [u8]> {
        self.attributes.iter().find_map(|a| match a {
            RadiusAttribute::Unknown(k, value) if *k == kind => Some(*value),
            _ => None,
        })
    }

    pub fn status(&self) -> Option<Status> {
        let value: [u8; 4] = self.unknown(attr::ACCT_STATUS_TYPE)?.try_into().ok()?;
        Some(Status::from_value(u32::from_be_bytes(value)))
    }

    pub fn session_id(&self) -> Option<&'a [u8]> {
        self.unknown(attr::ACCT_SESSION_ID)
    }

    /// When the NAS sent this record, in Unix seconds: its Event-Timestamp
    /// plus its Acct-Delay-Time (a record re-sent with a new delay is a
    /// new packet, new Identifier and authenticator, so a replay carries
    /// the time of the original). `None` without an Event-Timestamp.
    pub fn sent_at_secs(&self) -> Option<u64> {
        let integer = |kind| -> Option<u32> {
            Some(u32::from_be_bytes(self.unknown(kind)?.try_into().ok()?))
        };
        let event = integer(attr::EVENT_TIMESTAMP)?;
        let delay = integer(attr::ACCT_DELAY_TIME).unwrap_or(0);
        Some(u64::from(event) + u64::from(delay))
    }

    /// The subscriber's addresses: Framed-IP-Address as a /32, and
    /// Framed-IPv6-Prefix (RFC 3162: reserved, length, prefix bits).
    pub fn networks(&self) -> Vec<IpNet> {
        let mut networks = Vec::new();
        for a in &self.attributes {
            match a {
                RadiusAttribute::FramedIPAddress(v4) if is_host(*v4) => {
                    networks.push(IpNet::from(IpAddr::V4(*v4)));
                }
                RadiusAttribute::Unknown(attr::FRAMED_IPV6_PREFIX, value) => {
                    if let Some(prefix) = ipv6_prefix(value) {
                        networks.push(IpNet::V6(prefix));
                    }
                }
                _ => {}
            }
        }
        networks
    }

    /// The raw MSISDN text where `from` says it is.
    pub fn msisdn(&self, from: MsisdnAttribute) -> Option<&'a [u8]> {
        self.attributes.iter().find_map(|a| match (from, a) {
            (MsisdnAttribute::CallingStationId, RadiusAttribute::CallingStationId(v)) => Some(*v),
            (MsisdnAttribute::UserName, RadiusAttribute::UserName(v)) => Some(*v),
            (
                MsisdnAttribute::Vendor { vendor, kind },
                RadiusAttribute::VendorSpecific(id, data),
            ) if *id == vendor => vendor_attribute(data, kind),
            _ => None,
        })
    }
}

/// 255.255.255.254 asks the NAS to pick, 255.255.255.255 lets the user
/// pick (RFC 2865 §5.8): neither is an address.
fn is_host(v4: Ipv4Addr) -> bool {
    !v4.is_unspecified() && v4 < Ipv4Addr::new(255, 255, 255, 254)
}

fn ipv6_prefix(value: &[u8]) -> Option<Ipv6Net> {
    let (&length, bits) = value.get(1..)?.split_first()?;
    if length > 128 || bits.len() > 16 || bits.len() * 8 < usize::from(length) {
        return None;
    }
    let mut octets = [0u8; 16];
    octets[..bits.len()].copy_from_slice(bits);
    Ipv6Net::new(Ipv6Addr::from(octets), length)
        .ok()
        .map(|n| n.trunc())
}

/// Sub-attribute `kind` of a vendor attribute's data (RFC 2865 §5.26's
/// suggested format: type, length, value).
fn vendor_attribute(mut data: &[u8], kind: u8) -> Option<&[u8]> {
    while let [t, len, ..] = *data {
        let len = usize::from(len);
        if len < 2 || len > data.len() {
            return None;
        }
        if t == kind {
            return Some(&data[2..len]);
        }
        data = &data[len..];
    }
    None
}

/// An Accounting-Request with `attributes` (type, value), signed with
/// `secret`: what a PGW sends. For tests, benches and fuzz seeds.
pub fn accounting_request(identifier: u8, attributes: &[(u8, &[u8])], secret: &[u8]) -> Vec<u8> {
    let mut packet = vec![ACCOUNTING_REQUEST, identifier, 0, 0];
    packet.extend_from_slice(&[0; 16]);
    for (kind, value) in attributes {
        packet.push(*kind);
        packet.push((value.len() + 2) as u8);
        packet.extend_from_slice(value);
    }
    let length = (packet.len() as u16).to_be_bytes();
    packet[2..4].copy_from_slice(&length);
    let authenticator = request_authenticator(&packet, secret);
    packet[4..HEADER].copy_from_slice(&authenticator);
    packet
}

/// The attributes of a session Start/Interim/Stop for `accounting_request`.
pub fn session_attributes(
    status: Status,
    address: Ipv4Addr,
    msisdn: &str,
    session_id: &str,
) -> Vec<(u8, Vec<u8>)> {
    vec![
        (
            attr::ACCT_STATUS_TYPE,
            status.value().to_be_bytes().to_vec(),
        ),
        (attr::FRAMED_IP_ADDRESS, address.octets().to_vec()),
        (attr::CALLING_STATION_ID, msisdn.as_bytes().to_vec()),
        (attr::ACCT_SESSION_ID, session_id.as_bytes().to_vec()),
    ]
}

/// Whether `response` is the Accounting-Response to `request` under
/// `secret` (what a NAS checks).
pub fn is_response_to(response: &[u8], request: &[u8], secret: &[u8]) -> bool {
    if response.len() < HEADER || response[0] != ACCOUNTING_RESPONSE || response[1] != request[1] {
        return false;
    }
    let mut md5 = Md5::new();
    md5.update(&response[..4]);
    md5.update(&request[4..HEADER]);
    md5.update(&response[HEADER..]);
    md5.update(secret);
    md5.finalize().as_slice() == &response[4..HEADER]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"testing123";

    fn start() -> Vec<u8> {
        let attrs = session_attributes(
            Status::Start,
            Ipv4Addr::new(10, 1, 2, 3),
            "447700900001",
            "s-1",
        );
        let attrs: Vec<(u8, &[u8])> = attrs.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        accounting_request(7, &attrs, SECRET)
    }

    #[test]
    fn a_signed_request_reads_back_and_is_answered() {
        let packet = start();
        let header = Header::read(&packet).unwrap();
        header.verify(SECRET).unwrap();
        assert_eq!(header.verify(b"wrong"), Err(PacketError::BadAuthenticator));
        let request = header.attributes().unwrap();
        assert_eq!(request.status(), Some(Status::Start));
        assert_eq!(request.session_id(), Some(&b"s-1"[..]));
        assert_eq!(
            request.networks(),
            ["10.1.2.3/32".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            request.msisdn(MsisdnAttribute::CallingStationId),
            Some(&b"447700900001"[..])
        );
        assert_eq!(request.msisdn(MsisdnAttribute::UserName), None);
        let response = header.response(SECRET);
        assert!(is_response_to(&response, &packet, SECRET));
        assert!(!is_response_to(&response, &packet, b"wrong"));
    }

    #[test]
    fn padding_is_ignored_and_short_or_foreign_packets_refused() {
        let mut padded = start();
        padded.extend_from_slice(&[0xff; 9]);
        Header::read(&padded).unwrap().verify(SECRET).unwrap();
        let packet = start();
        assert_eq!(
            Header::read(&packet[..19]).err(),
            Some(PacketError::Truncated)
        );
        assert_eq!(
            Header::read(&packet[..packet.len() - 1]).err(),
            Some(PacketError::Truncated)
        );
        let mut access = packet.clone();
        access[0] = 1;
        assert_eq!(
            Header::read(&access).err(),
            Some(PacketError::NotAccountingRequest(1))
        );
        let mut tampered = packet;
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let header = Header::read(&tampered).unwrap();
        assert_eq!(header.verify(SECRET), Err(PacketError::BadAuthenticator));
    }

    #[test]
    fn ipv6_prefixes_and_vendor_msisdns_are_read() {
        let prefix = [0u8, 64, 0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2];
        let vsa = [
            0, 0, 0x28, 0xaf, 9, 4, b'x', b'y', 7, 9, b'+', b'4', b'4', b'7', b'7', b'0', b'0',
        ];
        let packet = accounting_request(
            1,
            &[
                (attr::FRAMED_IPV6_PREFIX, &prefix),
                (attr::VENDOR_SPECIFIC, &vsa),
            ],
            SECRET,
        );
        let request = Header::read(&packet).unwrap().attributes().unwrap();
        assert_eq!(
            request.networks(),
            ["2001:db8:1:2::/64".parse::<IpNet>().unwrap()]
        );
        let from = "vendor:10415:7".parse().unwrap();
        assert_eq!(request.msisdn(from), Some(&b"+447700"[..]));
        assert_eq!(request.msisdn("vendor:10415:8".parse().unwrap()), None);
        assert!("vendor:x:7".parse::<MsisdnAttribute>().is_err());
        assert_eq!(ipv6_prefix(&[0, 129]), None);
        assert_eq!(ipv6_prefix(&[0, 64, 1]), None);
    }
}
