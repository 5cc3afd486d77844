//! Listening sockets: one per worker per frontend, in a `SO_REUSEPORT`
//! group, with a classic BPF steering program that hands each new
//! connection to the socket of the CPU that received it.
//!
//! The kernel numbers a group's sockets in the order they start listening,
//! and `SO_ATTACH_REUSEPORT_CBPF` returns an index into that order. The
//! sockets are created in worker order here, and the program returns
//! `cpu % workers`, so worker `i`, pinned to CPU `i`, gets the connections
//! whose SYN CPU `i` handled: the same CPU whose XDP token cache admitted
//! the SYN.

use std::{io, net::SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// Accept backlog per socket.
const BACKLOG: i32 = 4096;

/// Binds `workers` sockets to `addr` in one `SO_REUSEPORT` group, steered
/// by CPU.
///
/// # Errors
/// The address cannot be bound (in use, not local) or the steering program
/// is refused; the error names the address.
pub fn bind_group(addr: SocketAddr, workers: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        socket
            .bind(&addr.into())
            .map_err(|e| io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
        socket.listen(BACKLOG)?;
        out.push(socket);
    }
    if let Some(first) = out.first() {
        attach_cpu_steering(first, workers)
            .map_err(|e| io::Error::new(e.kind(), format!("steering program on {addr}: {e}")))?;
    }
    Ok(out.into_iter().map(Into::into).collect())
}

/// Attaches `return cpu % workers` to the socket's reuseport group.
fn attach_cpu_steering(socket: &Socket, workers: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
    // BPF_LD | BPF_W | BPF_ABS, BPF_ALU | BPF_MOD | BPF_K, BPF_RET | BPF_A.
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_ALU_MOD_K: u16 = 0x94;
    const BPF_RET_A: u16 = 0x16;
    const SKF_AD_OFF: i32 = -0x1000;
    const SKF_AD_CPU: i32 = 36;
    let n = u32::try_from(workers.max(1)).unwrap_or(u32::MAX);
    let mut code = [
        libc::sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: (SKF_AD_OFF + SKF_AD_CPU).cast_unsigned(),
        },
        libc::sock_filter {
            code: BPF_ALU_MOD_K,
            jt: 0,
            jf: 0,
            k: n,
        },
        libc::sock_filter {
            code: BPF_RET_A,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let prog = libc::sock_fprog {
        len: 3,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: a valid socket fd and a sock_fprog pointing at `code`, which
    // outlives the call (the kernel copies the program).
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            std::ptr::from_ref(&prog).cast(),
            u32::try_from(std::mem::size_of::<libc::sock_fprog>()).unwrap_or(0),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The CPUs this process may run on, in order.
#[must_use]
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, usize::from)).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Pins the calling thread to one CPU.
///
/// # Errors
/// The kernel refuses (CPU not allowed).
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays within it for cpu <
    // CPU_SETSIZE, checked first.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set) == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}
