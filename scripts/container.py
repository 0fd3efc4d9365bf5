"""A crun container for the benchmarks (scripts/bench on the host,
scripts/nested/linux-bench in the outer VM): a VM beside a container.

The container is made the way a user of Debian's crun makes one, without an
image registry: an OCI bundle whose config.json is what `crun spec` writes
(pid, network, ipc, uts and mount namespaces, the default mounts, masked and
read-only paths, three capabilities, a read-only root, device rules),
changed only where the job needs it: no terminal, and the command. Its root
filesystem is busybox-static alone (/bin/busybox, a symlink per applet, and
empty /proc, /dev, /sys and /tmp mount points). Each launch is one
`crun run`, which creates the container, starts it, waits for its process
and deletes it, with crun's default cgroup manager (cgroupfs: a cgroup of
its own under /sys/fs/cgroup). Each launch needs its own container id:
ids() gives them.

Two things on the way can keep crun from running, and are handled here
rather than left to fail every run:
  - crun runs only on a unified cgroup2 hierarchy at /sys/fs/cgroup (in
    hybrid mode, v1 controllers with cgroup2 beside them, it stops with
    "cgroups in hybrid mode not supported"). unify_cgroups() then moves this
    process into a mount namespace of its own and mounts cgroup2 there:
    this process and its children see it, no one else does.
  - crun's default device rules make it load an eBPF program into the
    container's cgroup, and before that it raises RLIMIT_MEMLOCK, which a
    process without CAP_SYS_RESOURCE cannot do. When the default spec
    fails, Bundle.probe() tries once more without the device rules and,
    if that runs, keeps it and says so.
Both are reported in words (Bundle.setup) so that the figures say how the
container was run.

Python 3 standard library only.
"""

import ctypes
import itertools
import json
import os
import shutil
import subprocess

CRUN = "crun"
CRUN_PACKAGE = "crun"
BUSYBOX = "/bin/busybox"
CGROUP_ROOT = "/sys/fs/cgroup"
# <sched.h> and <sys/mount.h>.
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
# <linux/capability.h>.
CAP_SYS_RESOURCE = 24


class Unavailable(Exception):
    """No container can be measured here: one line saying why."""


def find_crun():
    """crun's path; Unavailable when it is missing or this is not root
    (crun's default, rootful spec needs root)."""
    path = shutil.which(CRUN)
    if not path:
        raise Unavailable(f"{CRUN} is missing (Debian's {CRUN_PACKAGE} package; run "
                          "scripts/install-deps)")
    if os.geteuid() != 0:
        raise Unavailable("not root: crun's default spec makes a rootful container")
    return path


def cgroup_fstype():
    """The file system mounted at /sys/fs/cgroup as this process sees it
    (the last mount there wins, as it hides the ones below), or None."""
    fstype = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                # "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS...] - FSTYPE ..."
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) >= 5 and fields[4] == CGROUP_ROOT and right:
                    fstype = right.split()[0]
    except OSError as e:
        raise Unavailable(f"cannot read /proc/self/mountinfo: {e.strerror}")
    return fstype


def unify_cgroups():
    """Makes /sys/fs/cgroup a cgroup2 mount for this process and the
    children it starts from now on. When it already is (a unified host),
    changes nothing and returns ""; else it unshares this process's mount
    namespace, makes every mount in it private (so nothing mounted here
    propagates back to the host's namespace), mounts cgroup2 on
    /sys/fs/cgroup there, and returns a sentence saying so. The host's own
    mounts are never touched. Must run while this process has one thread:
    unshare(CLONE_NEWNS) moves only the calling thread."""
    before = cgroup_fstype()
    if before == "cgroup2":
        return ""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_ulong, ctypes.c_void_p]
    if libc.unshare(CLONE_NEWNS) != 0:
        raise Unavailable(f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}")
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise Unavailable(f"making / private in the new mount namespace: "
                          f"{os.strerror(ctypes.get_errno())}")
    if libc.mount(b"cgroup2", CGROUP_ROOT.encode(), b"cgroup2", 0, None) != 0:
        raise Unavailable(f"mounting cgroup2 on {CGROUP_ROOT}: {os.strerror(ctypes.get_errno())}")
    was = (f"a {before} mount (cgroup v1 or hybrid)" if before
           else "nothing mounted")
    return (f"{CGROUP_ROOT} held {was}, where crun runs only on a unified cgroup2 "
            f"hierarchy: the bench moved itself into a private mount namespace and mounted "
            f"cgroup2 on {CGROUP_ROOT} there, for itself and its children only")


def ids(prefix):
    """Container ids unique to this process: prefix-PID-N."""
    return (f"{prefix}-{os.getpid()}-{n}" for n in itertools.count())


class Bundle:
    """An OCI bundle in `workdir` (made there; the caller removes it) for a
    container running `args`, and crun's state directory beside it, so that
    nothing this bench starts is listed among the host's containers."""

    def __init__(self, crun, workdir, args):
        self.crun = crun
        self.dir = os.path.join(workdir, "bundle")
        self.state = os.path.join(workdir, "state")
        self.args = list(args)
        self.setup = []      # sentences: how the container is run, if not as spec'd
        rootfs = os.path.join(self.dir, "rootfs")
        bindir = os.path.join(rootfs, "bin")
        os.makedirs(bindir)
        os.makedirs(self.state)
        for d in ("proc", "dev", "sys", "tmp"):
            os.mkdir(os.path.join(rootfs, d))
        if not os.path.exists(BUSYBOX):
            raise Unavailable(f"{BUSYBOX} is missing (Debian's busybox-static; run "
                              "scripts/install-deps)")
        shutil.copy2(BUSYBOX, os.path.join(bindir, "busybox"))
        p = subprocess.run([BUSYBOX, "--list"], stdout=subprocess.PIPE, text=True)
        for applet in p.stdout.split():
            if applet != "busybox" and "/" not in applet:
                os.symlink("busybox", os.path.join(bindir, applet))
        p = subprocess.run([crun, "spec", "--bundle", self.dir], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            raise Unavailable(f"crun spec failed: {error_line(p.stderr)}")
        self.config_path = os.path.join(self.dir, "config.json")
        with open(self.config_path) as f:
            self.config = json.load(f)
        self.config["process"]["terminal"] = False
        self.config["process"]["args"] = self.args
        self._write()

    def _write(self):
        with open(self.config_path, "w") as f:
            json.dump(self.config, f, indent=1)

    def describe(self):
        """What the container gets, in words, read from its config.json as
        it is run (after probe(): without device rules if it dropped them)."""
        lx = self.config.get("linux", {})
        ns = [n.get("type", "?") for n in lx.get("namespaces", [])]
        caps = self.config.get("process", {}).get("capabilities", {}).get("bounding", [])
        root = self.config.get("root", {})
        rules = lx.get("resources", {}).get("devices")
        return (f"{words(ns)} namespaces, {len(self.config.get('mounts', []))} mounts, "
                f"{len(lx.get('maskedPaths', []))} masked and "
                f"{len(lx.get('readonlyPaths', []))} read-only paths, "
                f"{len(caps)} capabilities ({words(caps)}), a "
                f"{'read-only' if root.get('readonly') else 'writable'} root, "
                + (f"{len(rules)} device rule{'' if len(rules) == 1 else 's'}" if rules
                   else "no device rules"))

    def argv(self, cid):
        """One launch: create, start, wait for and delete container `cid`."""
        return [self.crun, "--root", self.state, "run", "--bundle", self.dir, cid]

    def probe(self, cid, expect_out):
        """Runs the container once, as spec'd; if that fails, once more
        without the default device rules (see the module's docstring), and
        keeps whichever ran. `expect_out` is the exact stdout, or a callable
        that says whether stdout is right. Unavailable, with crun's own
        error, when neither run exited 0 with the right output."""
        err = self._try(cid + "-a", expect_out)
        if err is None:
            return
        devices = self.config.get("linux", {}).get("resources", {}).pop("devices", None)
        if devices is None:
            raise Unavailable(f"crun run failed: {err}")
        self._write()
        err2 = self._try(cid + "-b", expect_out)
        if err2 is not None:
            raise Unavailable(f"crun run failed: {err} (and without the default device "
                              f"rules: {err2})")
        why = ""
        if "RLIM_MEMLOCK" in err:
            why = (" (crun raises RLIMIT_MEMLOCK before it loads the rules as an eBPF "
                   "program into the container's cgroup, and raising it needs "
                   "CAP_SYS_RESOURCE"
                   + (", which this process lacks)" if not has_cap(CAP_SYS_RESOURCE) else ")"))
        self.setup.append(
            f"crun's default device rules (linux.resources.devices) were dropped: with them "
            f"crun stopped here with \"{err}\"{why}; the container still gets its own "
            f"cgroup, namespaces and mounts")

    def _try(self, cid, expect_out):
        """None when container `cid` ran as it should, else why not."""
        try:
            p = subprocess.run(self.argv(cid), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        except subprocess.TimeoutExpired:
            self.delete_all()
            return "still running after 60 s"
        if p.returncode != 0:
            # A crun run that failed halfway can leave its cgroup behind
            # (seen: the device rules' failure came after the cgroup was
            # made): empty, since no process of it is left, so rmdir works.
            self.delete_all()
            try:
                os.rmdir(os.path.join(CGROUP_ROOT, cid))
            except OSError:
                pass
            return error_line(p.stderr.decode(errors="replace")) or f"exit status {p.returncode}"
        right = expect_out(p.stdout) if callable(expect_out) else p.stdout == expect_out
        if not right:
            want = "" if callable(expect_out) else f", expected {expect_out!r}"
            return f"printed {p.stdout[:200]!r}{want}"
        return None

    def delete_all(self):
        """Deletes, by force, every container still in this bundle's state
        directory (one whose crun run was killed); crun's delete also
        removes its cgroup."""
        try:
            left = os.listdir(self.state)
        except OSError:
            return
        for cid in left:
            if os.path.isdir(os.path.join(self.state, cid)):
                subprocess.run([self.crun, "--root", self.state, "delete", "--force", cid],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def words(xs):
    """a, b and c."""
    xs = list(xs)
    return " and ".join([", ".join(xs[:-1]), xs[-1]]) if len(xs) > 1 else "".join(xs)


def has_cap(bit):
    """Whether this process has capability `bit` in its effective set."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return False


def error_line(text):
    """crun's error in one line: the last non-empty line it wrote (its
    error comes last)."""
    lines = [s.strip() for s in text.strip().splitlines() if s.strip()]
    return lines[-1] if lines else ""
