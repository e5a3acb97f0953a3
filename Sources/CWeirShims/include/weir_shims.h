#ifndef WEIR_SHIMS_H
#define WEIR_SHIMS_H
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <linux/netlink.h>

/// The calling thread's errno (Swift cannot read the thread-local macro portably).
int weir_errno(void);
/// setns(fd, CLONE_NEWNET): moves the calling thread only.
int weir_setns_net(int fd);
/// unshare(CLONE_NEWNET) on the calling thread.
int weir_unshare_net(void);
/// Reads the pre-NAT destination of a redirected TCP connection:
/// SO_ORIGINAL_DST (IPv4) or IP6T_SO_ORIGINAL_DST (IPv6), both option number 80.
int weir_original_dst(int fd, int family, struct sockaddr_storage *out, socklen_t *len);
/// Sets IP_TRANSPARENT / IPV6_TRANSPARENT.
int weir_set_transparent(int fd, int family);
/// Sets SO_MARK.
int weir_set_mark(int fd, uint32_t mark);

/// statfs(path).f_type, or -1 with errno set.
long weir_fs_type(const char *path);

/// pipe2(fds, O_CLOEXEC).
int weir_pipe_cloexec(int fds[2]);

/// Changes the real, effective and saved uid and gid of the calling thread only (raw syscalls; glibc's
/// wrappers would change every thread). Tests use it on a throwaway thread to act as another user.
int weir_thread_set_ids(uint32_t uid, uint32_t gid);

/// 1 when the interface is up in the calling thread's network namespace, 0 when down, -1 with errno on error.
int weir_interface_is_up(const char *name);

/// splice(2) without offsets.
long weir_splice(int fd_in, int fd_out, unsigned long len, unsigned int flags);
/// A non-blocking pipe for splice (O_NONBLOCK | O_CLOEXEC).
int weir_pipe_nonblock(int fds[2]);
/// accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC; fills the peer address.
int weir_accept(int fd, struct sockaddr_storage *peer, socklen_t *len);
/// SO_LINGER {on, 0}: the next close sends RST instead of FIN.
int weir_set_linger_reset(int fd);
/// epoll wrappers that keep the packed epoll_event struct on the C side.
int weir_epoll_create(void);
int weir_epoll_add(int ep, int fd, uint32_t events, uint64_t data);
int weir_epoll_del(int ep, int fd);
/// Waits; fills data[i] and events[i]; returns the count or -1.
int weir_epoll_wait(int ep, uint64_t *data, uint32_t *events, int max, int timeout_ms);
/// A non-blocking CLOCK_MONOTONIC timerfd that fires every `period_ms`; returns the descriptor or -1.
/// An event loop that sleeps in epoll_wait(-1) with this timer registered arms one kernel timer per
/// period, not one per wait (in a virtual machine each arm and cancel can exit to the hypervisor).
int weir_timerfd_periodic(int period_ms);
/// Reads and discards a timerfd's expiry count.
void weir_timerfd_ack(int fd);
/// Sets SO_REUSEPORT and SO_REUSEADDR.
int weir_set_reuse(int fd);
/// Sets TCP_NODELAY.
int weir_set_nodelay(int fd);
#define WEIR_EPOLLIN 0x001u
#define WEIR_EPOLLOUT 0x004u
#define WEIR_EPOLLERR 0x008u
#define WEIR_EPOLLHUP 0x010u
#define WEIR_EPOLLRDHUP 0x2000u
#define WEIR_EPOLLET (1u << 31)
#define WEIR_SPLICE_MOVE 1u
#define WEIR_SPLICE_NONBLOCK 2u
#define WEIR_SPLICE_MORE 4u

#include <dirent.h>
/// readdir with errno cleared first: NULL with errno 0 is the end of the directory.
struct dirent *weir_readdir(DIR *d);
/// ioctl(NS_GET_NSTYPE): the CLONE_NEW* type of a namespace file, or -1 (ENOTTY: not a namespace file).
int weir_namespace_type(int fd);
/// CLONE_NEWNET, for comparing with weir_namespace_type.
int weir_clone_newnet(void);
/// Names the calling thread (at most 15 bytes are kept), as ps and top show it.
void weir_set_thread_name(const char *name);

/// eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC).
int weir_eventfd(void);

/// Grows a pipe's capacity (F_SETPIPE_SZ); returns the new size or -1.
int weir_pipe_grow(int fd, int size);

/// sendmsg of one datagram `buf` to `to`, with `nfds` descriptors as SCM_RIGHTS (systemd's FDSTORE=1); bytes sent
/// or -1.
long weir_send_with_fds(int sock, const void *buf, unsigned long len, const void *to, unsigned int tolen,
                        const int *fds, int nfds);
/// Sets FD_CLOEXEC on a descriptor this process inherited (fcntl is variadic: Swift cannot call it).
int weir_set_cloexec(int fd);
#endif
