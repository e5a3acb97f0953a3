"""What the benchmark scripts read of a process from /proc."""
import os


def rss_kib(pid):
    """Resident memory in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    """User and system CPU time, in seconds (ticks of 1/SC_CLK_TCK)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ThreadCPU:
    """CPU time of a process to the nanosecond: the sum of its threads' run time (/proc/PID/task/*/schedstat), as
    /proc/PID/stat counts only in ticks (10 ms, too coarse for one xDS change). A thread that ends between two
    readings takes its time with it: `since` then falls back to the tick count, and says so."""

    def __init__(self, pid):
        self.pid = pid
        self.ns, self.tids = self._read()
        self.ticks = cpu_seconds(pid)

    def _read(self):
        total, tids = 0, set()
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
                tids.add(tid)
            except (OSError, ValueError):
                pass
        return total, tids

    def since(self):
        """Seconds of CPU since this reading, and whether they are to the nanosecond (else ticks)."""
        ns, tids = self._read()
        if self.tids <= tids:
            return (ns - self.ns) / 1e9, True
        return cpu_seconds(self.pid) - self.ticks, False
