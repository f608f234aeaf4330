//! The two nf_tables operations that need no ruleset text, spoken directly
//! over netlink (NETLINK_NETFILTER): listing the tables of a namespace and
//! deleting one table. Each used to cost an `nft` process (a few ms of
//! start-up, competing for the CPU with the run being set up or torn down).
//! Rulesets themselves are still applied by `nft -f -` (see `nft.rs`): as
//! text they can be read and audited in the session's terms.
//!
//! Messages (linux/netfilter/nfnetlink.h, nf_tables.h): a netlink header,
//! then `struct nfgenmsg { u8 family; u8 version; __be16 res_id; }`, then
//! attributes. Changes go in a batch (`NFNL_MSG_BATCH_BEGIN` ..
//! `NFNL_MSG_BATCH_END`) that the kernel applies as one transaction.
//!
//! Invariants: like `rtnl`, a socket talks to the network namespace of the
//! thread that opened it, and every request waits for the kernel's answer
//! with its own sequence number.

use std::io;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use super::rtnl::{kernel_socket, recv_datagram};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFTA_TABLE_NAME: u16 = 1;

/// `NFPROTO_UNSPEC`: every family (in a dump).
const FAMILY_ANY: u8 = 0;
/// `NFPROTO_INET`: the `inet` family of vallignus's tables.
pub const FAMILY_INET: u8 = 1;

const HEADER: usize = 16;
const NFGEN: usize = 4;

fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// Append one netlink message: header, nfgenmsg, attributes.
fn push_message(
    out: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[(u16, &[u8])],
) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]); // length, filled in below
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    for (kind, payload) in attrs {
        let len = 4 + payload.len();
        out.extend_from_slice(&(len as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(out.len() + (4 - len % 4) % 4, 0);
    }
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// A string attribute's payload: the bytes and a NUL.
fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// One message of a received datagram.
#[derive(Debug, PartialEq)]
struct Message<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    body: &'a [u8],
}

/// Split a datagram into its messages.
fn messages(buf: &[u8]) -> io::Result<Vec<Message<'_>>> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset + HEADER <= buf.len() {
        let word = |at: usize| [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        let len = u32::from_ne_bytes(word(offset)) as usize;
        if len < HEADER || offset + len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed netlink message length",
            ));
        }
        out.push(Message {
            kind: u16::from_ne_bytes([buf[offset + 4], buf[offset + 5]]),
            flags: u16::from_ne_bytes([buf[offset + 6], buf[offset + 7]]),
            seq: u32::from_ne_bytes(word(offset + 8)),
            body: &buf[offset + HEADER..offset + len],
        });
        offset += (len + 3) & !3;
    }
    Ok(out)
}

/// The errno of an `NLMSG_ERROR` body (0 for an acknowledgement).
fn error_code(body: &[u8]) -> io::Result<i32> {
    match body.get(..4) {
        Some(b) => Ok(-i32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "truncated netlink error",
        )),
    }
}

/// (family, name) of an `NFT_MSG_NEWTABLE` body.
fn parse_table(body: &[u8]) -> Option<(u8, String)> {
    let family = *body.first()?;
    let mut attrs = body.get(NFGEN..)?;
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == NFTA_TABLE_NAME {
            let value = &attrs[4..len];
            let value = value.strip_suffix(&[0]).unwrap_or(value);
            return Some((family, String::from_utf8_lossy(value).into_owned()));
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
    }
    None
}

/// A NETLINK_NETFILTER socket bound to the calling thread's namespace.
pub struct Nfnl {
    socket: Socket,
    seq: u32,
}

impl Nfnl {
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            socket: kernel_socket(NETLINK_NETFILTER)?,
            seq: 0,
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        let sent = self.socket.send(buf, 0)?;
        if sent != buf.len() {
            return Err(io::Error::other("short netlink send"));
        }
        Ok(())
    }

    fn recv(&mut self) -> io::Result<Vec<u8>> {
        recv_datagram(&mut self.socket)
    }

    /// Every table of the namespace: (family, name).
    pub fn tables(&mut self) -> io::Result<Vec<(u8, String)>> {
        let seq = self.next_seq();
        let mut req = Vec::new();
        push_message(
            &mut req,
            nft_type(NFT_MSG_GETTABLE),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            FAMILY_ANY,
            0,
            &[],
        );
        self.send(&req)?;
        let mut tables = Vec::new();
        loop {
            let buf = self.recv()?;
            for m in messages(&buf)? {
                if m.seq != seq {
                    continue;
                }
                match m.kind {
                    NLMSG_DONE => return Ok(tables),
                    NLMSG_ERROR => match error_code(m.body)? {
                        0 => return Ok(tables),
                        errno => return Err(io::Error::from_raw_os_error(errno)),
                    },
                    k if k == nft_type(NFT_MSG_NEWTABLE) => {
                        tables.extend(parse_table(m.body));
                        if m.flags & NLM_F_MULTI == 0 {
                            return Ok(tables);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Delete table `name` of `family` in one transaction. `Ok(false)` if
    /// there was no such table.
    pub fn delete_table(&mut self, family: u8, name: &str) -> io::Result<bool> {
        let begin = self.next_seq();
        let seq = self.next_seq();
        let end = self.next_seq();
        let name = nul_terminated(name);
        let mut req = Vec::new();
        push_message(
            &mut req,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            begin,
            FAMILY_ANY,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        push_message(
            &mut req,
            nft_type(NFT_MSG_DELTABLE),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            family,
            0,
            &[(NFTA_TABLE_NAME, &name)],
        );
        push_message(
            &mut req,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end,
            FAMILY_ANY,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        self.send(&req)?;
        loop {
            let buf = self.recv()?;
            for m in messages(&buf)? {
                if m.kind != NLMSG_ERROR || (m.seq != seq && m.seq != begin && m.seq != end) {
                    continue;
                }
                match error_code(m.body)? {
                    0 if m.seq == seq => return Ok(true),
                    0 => {}
                    libc::ENOENT if m.seq == seq => return Ok(false),
                    errno => return Err(io::Error::from_raw_os_error(errno)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn messages_are_framed_and_padded() {
        let mut buf = Vec::new();
        push_message(&mut buf, 0x0a02, NLM_F_REQUEST, 7, 1, 0, &[(1, b"abc\0")]);
        push_message(&mut buf, 0x10, NLM_F_REQUEST, 8, 0, 10, &[(1, b"abcde\0")]);
        let msgs = messages(&buf).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].kind, 0x0a02);
        assert_eq!(msgs[0].seq, 7);
        // nfgenmsg: family 1, version 0, res_id 0; then len 8, type 1, "abc\0".
        assert_eq!(msgs[0].body, [1, 0, 0, 0, 8, 0, 1, 0, b'a', b'b', b'c', 0]);
        assert_eq!(msgs[1].seq, 8);
        // res_id is big-endian; the 10-byte attribute is padded to 12.
        assert_eq!(&msgs[1].body[..4], &[0, 0, 0, 10]);
        assert_eq!(msgs[1].body.len(), 4 + 12);
        assert_eq!(buf.len() % 4, 0);
    }

    #[test]
    fn a_table_message_gives_its_family_and_name() {
        let mut buf = Vec::new();
        push_message(
            &mut buf,
            nft_type(NFT_MSG_NEWTABLE),
            NLM_F_MULTI,
            1,
            FAMILY_INET,
            0,
            &[(2, &[0, 0, 0, 0]), (NFTA_TABLE_NAME, b"vallignus_1\0")],
        );
        let msgs = messages(&buf).unwrap();
        assert_eq!(
            parse_table(msgs[0].body),
            Some((FAMILY_INET, "vallignus_1".to_string()))
        );
        assert_eq!(parse_table(&[1, 0, 0, 0]), None);
    }

    #[test]
    fn malformed_lengths_are_refused() {
        let mut buf = Vec::new();
        push_message(&mut buf, 3, 0, 1, 0, 0, &[]);
        buf[0] = 200;
        assert!(messages(&buf).is_err());
        assert!(error_code(&[1, 2]).is_err());
        assert_eq!(error_code(&(-2i32).to_ne_bytes()).unwrap(), 2);
    }
}
