//! Listening sockets handed to the process by whoever started it: systemd socket activation
//! (`LISTEN_FDS`, with `LISTEN_PID` checked when set), or a supervisor or test harness that
//! bound the port itself. A handed-over socket is used for the configured listen address it is
//! bound to; an address with no such socket is bound as usual. A socket that matches no
//! configured address is refused at start: listening somewhere the operator did not configure,
//! or leaving a port they did open unanswered, are both mistakes worth stopping for.

use std::net::SocketAddr;

use anyhow::{Context as _, Result, bail};
use tokio::net::TcpListener;

/// The sockets handed over at start, not yet claimed by a listen address.
pub(crate) struct Inherited(Vec<(SocketAddr, std::net::TcpListener)>);

impl Inherited {
    /// Takes the sockets named by `LISTEN_FDS` and clears those variables, so that processes
    /// Gatehouse starts do not see them. Call it before any thread is started: it changes the
    /// environment.
    pub(crate) fn from_env() -> Result<Self> {
        let mut fds = listenfd::ListenFd::from_env();
        let mut sockets = Vec::with_capacity(fds.len());
        for i in 0..fds.len() {
            let l = fds
                .take_tcp_listener(i)
                .with_context(|| {
                    format!(
                        "socket {} handed over by LISTEN_FDS is not a TCP listener",
                        i + 3
                    )
                })?
                .with_context(|| {
                    format!("socket {} handed over by LISTEN_FDS is missing", i + 3)
                })?;
            let addr = l.local_addr()?;
            sockets.push((addr, l));
        }
        Ok(Self(sockets))
    }

    /// A listener on `addr` (`what` names it in errors): the handed-over socket bound to that
    /// address if there is one, else a new one.
    pub(crate) async fn listen(&mut self, addr: SocketAddr, what: &str) -> Result<TcpListener> {
        if let Some(i) = self.0.iter().position(|(a, _)| *a == addr) {
            let (_, l) = self.0.swap_remove(i);
            l.set_nonblocking(true)?;
            return TcpListener::from_std(l)
                .with_context(|| format!("cannot use the socket handed over for {addr} ({what})"));
        }
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ({what})"))
    }

    /// Whether a socket for `addr` was handed over.
    pub(crate) fn has(&self, addr: SocketAddr) -> bool {
        self.0.iter().any(|(a, _)| *a == addr)
    }

    /// Fails if a handed-over socket was not claimed by any listen address.
    pub(crate) fn all_claimed(&self) -> Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let left: Vec<String> = self.0.iter().map(|(a, _)| a.to_string()).collect();
        bail!(
            "sockets handed over by LISTEN_FDS match no configured listen address: {} \
             (set server.listen, admin.listen or ssh.listen to them)",
            left.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_handed_over_socket_serves_its_address_and_others_are_bound() {
        let given = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = given.local_addr().unwrap();
        let mut inh = Inherited(vec![(addr, given)]);
        let l = inh.listen(addr, "test").await.unwrap();
        assert_eq!(l.local_addr().unwrap(), addr);
        inh.all_claimed().unwrap();
        // Not handed over: bound afresh.
        let other = inh
            .listen("127.0.0.1:0".parse().unwrap(), "test")
            .await
            .unwrap();
        assert_ne!(other.local_addr().unwrap(), addr);
        // The handed-over socket really is the one accepting.
        let c = tokio::net::TcpStream::connect(addr);
        let (a, b) = tokio::join!(c, l.accept());
        assert_eq!(a.unwrap().local_addr().unwrap(), b.unwrap().1);
    }

    #[test]
    fn an_unclaimed_socket_is_an_error_naming_it() {
        let given = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = given.local_addr().unwrap();
        let e = Inherited(vec![(addr, given)]).all_claimed().unwrap_err();
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }
}
