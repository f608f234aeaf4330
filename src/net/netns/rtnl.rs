//! A small synchronous rtnetlink client (links and IPv4 addresses) on top of
//! `netlink-packet-route` and a blocking `netlink-sys` socket.
//!
//! Invariants:
//! - a socket talks to the network namespace of the thread that opened it,
//!   for its whole life (the kernel binds a netlink socket to the creator's
//!   netns), so a socket opened on a helper thread inside the agent's
//!   namespace keeps configuring that namespace;
//! - every request waits for the kernel's answer with the same sequence
//!   number: when a function returns `Ok`, the change is in effect.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage, State,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// MTU of both ends of a run's veth: the pair only ever carries traffic
/// between two sockets of this machine, so it gets loopback's size (fewer,
/// larger packets per byte; the agent's traffic to the outside world is the
/// proxy's own, on the host's interfaces).
pub const VETH_MTU: u32 = 65_535;

/// One link as seen in a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
    pub is_veth: bool,
    /// RFC 2863 operational state is `UP`: the kernel's link watcher has
    /// seen the carrier and activated the queueing discipline, so packets
    /// are transmitted (before that they are dropped).
    pub oper_up: bool,
}

/// One IPv4 address as seen in a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr4 {
    pub index: u32,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

/// A netlink socket of `protocol`, talking to the kernel, in the calling
/// thread's network namespace.
pub(super) fn kernel_socket(protocol: isize) -> io::Result<Socket> {
    let mut socket = Socket::new(protocol)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// Receive one datagram, whole, whatever its size.
pub(super) fn recv_datagram(socket: &mut Socket) -> io::Result<Vec<u8>> {
    let mut probe: Vec<u8> = Vec::with_capacity(64);
    let len = socket.recv(&mut probe, libc::MSG_PEEK | libc::MSG_TRUNC)?;
    let mut buf: Vec<u8> = Vec::with_capacity(len.max(64));
    let got = socket.recv(&mut buf, 0)?;
    buf.truncate(got);
    Ok(buf)
}

/// A NETLINK_ROUTE socket bound to the calling thread's network namespace.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            socket: kernel_socket(NETLINK_ROUTE)?,
            seq: 0,
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.header.length as usize];
        packet.serialize(&mut buf);
        let sent = self.socket.send(&buf, 0)?;
        if sent != buf.len() {
            return Err(io::Error::other("short netlink send"));
        }
        Ok(self.seq)
    }

    /// Receive one datagram (whole, whatever its size) and decode the
    /// netlink messages it carries.
    fn recv(&mut self) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let buf = recv_datagram(&mut self.socket)?;
        let mut out = Vec::new();
        let mut offset = 0usize;
        while offset + 16 <= buf.len() {
            let raw_len = u32::from_ne_bytes([
                buf[offset],
                buf[offset + 1],
                buf[offset + 2],
                buf[offset + 3],
            ]) as usize;
            if raw_len < 16 || offset + raw_len > buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "malformed netlink message length",
                ));
            }
            let msg =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..offset + raw_len])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            out.push(msg);
            offset += (raw_len + 3) & !3;
        }
        Ok(out)
    }

    /// A request answered by an acknowledgement (or an error).
    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        loop {
            for m in self.recv()? {
                if m.header.sequence_number != seq {
                    continue;
                }
                if let NetlinkPayload::Error(e) = m.payload {
                    return match e.code {
                        None => Ok(()),
                        Some(_) => Err(e.to_io()),
                    };
                }
            }
        }
    }

    /// A request answered by exactly one message (or an error).
    fn get(&mut self, msg: RouteNetlinkMessage) -> io::Result<RouteNetlinkMessage> {
        let seq = self.send(msg, 0)?;
        loop {
            for m in self.recv()? {
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(inner) => return Ok(inner),
                    _ => {}
                }
            }
        }
    }

    /// A dump request: every message until `NLMSG_DONE`.
    fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_DUMP)?;
        let mut out = Vec::new();
        loop {
            for m in self.recv()? {
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    _ => {}
                }
            }
        }
    }

    /// Index of the link called `name`, or `None` when there is none.
    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.get(RouteNetlinkMessage::GetLink(msg)) {
            Ok(RouteNetlinkMessage::NewLink(link)) => Ok(Some(link.header.index)),
            Ok(_) => Err(io::Error::other("unexpected answer to RTM_GETLINK")),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The link with index `index`, or `None` when there is none.
    pub fn link_by_index(&mut self, index: u32) -> io::Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.get(RouteNetlinkMessage::GetLink(msg)) {
            Ok(RouteNetlinkMessage::NewLink(link)) => Ok(Some(to_link(&link))),
            Ok(_) => Err(io::Error::other("unexpected answer to RTM_GETLINK")),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link of this namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let answers = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        Ok(answers
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(to_link(link)),
                _ => None,
            })
            .collect())
    }

    /// Every IPv4 address of this namespace.
    pub fn ipv4_addresses(&mut self) -> io::Result<Vec<Addr4>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let answers = self.dump(RouteNetlinkMessage::GetAddress(msg))?;
        let mut out = Vec::new();
        for m in answers {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            let local = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Local(IpAddr::V4(v4)) => Some(*v4),
                _ => None,
            });
            let address = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
                _ => None,
            });
            if let Some(addr) = local.or(address) {
                out.push(Addr4 {
                    index: a.header.index,
                    addr,
                    prefix_len: a.header.prefix_len,
                });
            }
        }
        Ok(out)
    }

    /// Create the veth pair `host` (in this namespace) / `peer` (directly in
    /// the namespace `peer_ns`), both down. Fails with `EEXIST` when `host`
    /// exists already: link creation is the atomic claim of a name.
    pub fn create_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_ns: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_owned()));
        peer_msg
            .attributes
            .push(LinkAttribute::NetNsFd(peer_ns.as_raw_fd()));
        peer_msg.attributes.push(LinkAttribute::Mtu(VETH_MTU));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(host.to_owned()));
        msg.attributes.push(LinkAttribute::Mtu(VETH_MTU));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Set the link's alias (`IFLA_IFALIAS`, shown by `ip link` as `alias`).
    pub fn set_alias(&mut self, index: u32, alias: &str) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::IfAlias(alias.to_owned()));
        self.ack(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Stop the kernel from giving the link any IPv6 address of its own
    /// (`addrgenmode none`: no link-local address). `EAFNOSUPPORT` (IPv6
    /// disabled in this kernel) counts as success: there is no IPv6 at all.
    pub fn disable_ipv6_autoconf(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]));
        match self.ack(RouteNetlinkMessage::SetLink(msg), 0) {
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => Ok(()),
            other => other,
        }
    }

    /// Add `addr/prefix_len` (with its broadcast address) to the link.
    pub fn add_ipv4(
        &mut self,
        index: u32,
        addr: Ipv4Addr,
        prefix_len: u8,
        broadcast: Ipv4Addr,
    ) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr)));
        msg.attributes.push(AddressAttribute::Broadcast(broadcast));
        self.ack(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Bring the link up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.ack(RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Wait until the link's operational state is `UP` (see [`Link::oper_up`]),
    /// polling every millisecond for at most `limit`. `TimedOut` otherwise.
    pub fn wait_oper_up(&mut self, index: u32, limit: std::time::Duration) -> io::Result<()> {
        let start = std::time::Instant::now();
        loop {
            match self.link_by_index(index)? {
                Some(link) if link.oper_up => return Ok(()),
                Some(_) => {}
                None => return Err(io::Error::from_raw_os_error(libc::ENODEV)),
            }
            if start.elapsed() >= limit {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("link still not operationally up after {limit:?}"),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Delete the link with index `index` (a veth takes its peer with it).
    /// `Ok(false)` when it does not exist (any more).
    pub fn delete_link(&mut self, index: u32) -> io::Result<bool> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.ack(RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn to_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        alias: None,
        is_veth: false,
        oper_up: false,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
            LinkAttribute::OperState(state) => link.oper_up = *state == State::Up,
            LinkAttribute::LinkInfo(infos) => {
                link.is_veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    link
}
