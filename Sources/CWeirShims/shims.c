#define _GNU_SOURCE
#include "weir_shims.h"
#include <net/if.h>
#include <errno.h>
#include <sched.h>
#include <sys/timerfd.h>
#include <time.h>
#include <string.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>

int weir_errno(void) { return errno; }

int weir_setns_net(int fd) { return setns(fd, CLONE_NEWNET); }

int weir_unshare_net(void) { return unshare(CLONE_NEWNET); }

int weir_original_dst(int fd, int family, struct sockaddr_storage *out, socklen_t *len) {
    memset(out, 0, sizeof(*out));
    *len = sizeof(*out);
    if (family == AF_INET6) {
        return getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, out, len);
    }
    return getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, out, len);
}

int weir_set_transparent(int fd, int family) {
    int one = 1;
    if (family == AF_INET6) {
        return setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one));
    }
    return setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one));
}

int weir_set_mark(int fd, uint32_t mark) {
    return setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark));
}

#include <sys/vfs.h>
long weir_fs_type(const char *path) {
    struct statfs s;
    if (statfs(path, &s) != 0) return -1;
    return (long)s.f_type;
}

#include <unistd.h>
#include <fcntl.h>
int weir_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

#include <sys/syscall.h>
int weir_thread_set_ids(uint32_t uid, uint32_t gid) {
    if (syscall(SYS_setresgid, gid, gid, gid) != 0) return -1;
    return (int)syscall(SYS_setresuid, uid, uid, uid);
}

#include <sys/ioctl.h>
int weir_interface_is_up(const char *name) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    int rc = ioctl(fd, SIOCGIFFLAGS, &ifr);
    int saved = errno;
    close(fd);
    if (rc != 0) { errno = saved; return -1; }
    return (ifr.ifr_flags & IFF_UP) ? 1 : 0;
}

#include <sys/epoll.h>
#include <netinet/tcp.h>
long weir_splice(int fd_in, int fd_out, unsigned long len, unsigned int flags) {
    return (long)splice(fd_in, NULL, fd_out, NULL, len, flags);
}
int weir_pipe_nonblock(int fds[2]) { return pipe2(fds, O_NONBLOCK | O_CLOEXEC); }
int weir_accept(int fd, struct sockaddr_storage *peer, socklen_t *len) {
    *len = sizeof(*peer);
    return accept4(fd, (struct sockaddr *)peer, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
}
int weir_set_linger_reset(int fd) {
    struct linger l = { .l_onoff = 1, .l_linger = 0 };
    return setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
}
int weir_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }
int weir_epoll_add(int ep, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev = { .events = events, .data.u64 = data };
    return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
}
int weir_epoll_del(int ep, int fd) { return epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL); }
int weir_epoll_wait(int ep, uint64_t *data, uint32_t *events, int max, int timeout_ms) {
    struct epoll_event evs[256];
    if (max > 256) max = 256;
    int n = epoll_wait(ep, evs, max, timeout_ms);
    for (int i = 0; i < n; i++) { data[i] = evs[i].data.u64; events[i] = evs[i].events; }
    return n;
}
int weir_timerfd_periodic(int period_ms) {
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (fd < 0) return -1;
    struct itimerspec spec = {
        .it_interval = { .tv_sec = period_ms / 1000, .tv_nsec = (long)(period_ms % 1000) * 1000000L },
        .it_value = { .tv_sec = period_ms / 1000, .tv_nsec = (long)(period_ms % 1000) * 1000000L },
    };
    if (timerfd_settime(fd, 0, &spec, NULL) != 0) { int e = errno; close(fd); errno = e; return -1; }
    return fd;
}
void weir_timerfd_ack(int fd) {
    uint64_t expirations;
    ssize_t n = read(fd, &expirations, sizeof(expirations));
    (void)n;
}
int weir_set_reuse(int fd) {
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) return -1;
    return setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
}
int weir_set_nodelay(int fd) {
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}
int weir_pipe_grow(int fd, int size) { return fcntl(fd, F_SETPIPE_SZ, size); }

#include <dirent.h>
#include <sys/ioctl.h>
#include <linux/nsfs.h>
#include <pthread.h>
struct dirent *weir_readdir(DIR *d) { errno = 0; return readdir(d); }
int weir_namespace_type(int fd) { return ioctl(fd, NS_GET_NSTYPE); }
int weir_clone_newnet(void) { return CLONE_NEWNET; }
void weir_set_thread_name(const char *name) {
    char short_name[16];
    strncpy(short_name, name, 15);
    short_name[15] = 0;
    pthread_setname_np(pthread_self(), short_name);
}
#include <sys/eventfd.h>
int weir_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

#include <fcntl.h>
#include <sys/socket.h>
long weir_send_with_fds(int sock, const void *buf, unsigned long len, const void *to, unsigned int tolen,
                        const int *fds, int nfds) {
    if (nfds < 0 || nfds > 253) { errno = EINVAL; return -1; }
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    union { char bytes[CMSG_SPACE(sizeof(int) * 253)]; struct cmsghdr align; } control;
    memset(&control, 0, sizeof(control));
    struct msghdr msg = { .msg_name = (void *)to, .msg_namelen = tolen, .msg_iov = &iov, .msg_iovlen = 1 };
    if (nfds > 0) {
        msg.msg_control = control.bytes;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    return sendmsg(sock, &msg, MSG_NOSIGNAL);
}
int weir_set_cloexec(int fd) {
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0) return -1;
    return fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}
