#!/usr/bin/env python3
"""Fill vendor/ and vendor/modules.txt of a Go module from Debian's /usr/share/gocode/src,
so that `go build` / `go test` work with GOPROXY=off (no module proxy is reachable).

Usage: vendor_from_debian.py [MODULE_DIR] (default: the current directory).

go.mod is read, never written: its `require` versions label the vendored modules (vendor
mode checks that each requirement is vendored as `## explicit` with the same version and
never fetches), and a `replace` by a local directory (a consumer's `=> ../`) is vendored
from that directory. Only the packages actually imported are copied. Modules that go.mod
does not name get Debian 12's versions as labels.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

SRC = "/usr/share/gocode/src"
VERSIONS = {"google.golang.org/grpc": "v1.33.3", "google.golang.org/protobuf": "v1.28.1",
            "github.com/golang/protobuf": "v1.5.2", "golang.org/x/net": "v0.7.0",
            "golang.org/x/sys": "v0.3.0", "golang.org/x/text": "v0.7.0",
            "google.golang.org/genproto": "v0.0.0-20200413115906-b5235f65be36"}  # Debian 12
SKIP_DIRS = {"vendor", "bin", "testdata"}


def read(path):
    with open(path) as f:
        return f.read()


def parse_gomod(text):
    """-> (module path, go version, {module: version}, {module: local directory})."""
    text = re.sub(r"//.*", "", text)
    module = re.search(r"^module\s+(\S+)", text, re.M).group(1)
    go = re.search(r"^go\s+(\S+)", text, re.M)
    requires, replaces = {}, {}
    for kind, body in re.findall(r"^(require|replace)\s*\(\n(.*?)^\)", text, re.M | re.S):
        for line in body.splitlines():
            if line.strip():
                (requires if kind == "require" else replaces).setdefault(line.strip(), None)
    for kind, line in re.findall(r"^(require|replace)\s+([^(\s].*)$", text, re.M):
        (requires if kind == "require" else replaces).setdefault(line.strip(), None)
    requires = dict(line.split()[:2] for line in requires)
    local = {}
    for line in replaces:
        old, new = (part.split() for part in line.split("=>"))
        if new[0].startswith(("./", "../", "/")):
            local[old[0]] = new[0]
    return module, go and go.group(1), requires, local


def modinfo(directory, root):
    """Nearest go.mod at or above `directory`, up to `root` -> (module path, go version)."""
    d = directory
    while True:
        if os.path.exists(d + "/go.mod"):
            module, go, _, _ = parse_gomod(read(d + "/go.mod"))
            return module, go
        if d == root or len(d) <= len(root):
            return None
        d = os.path.dirname(d)


def own_patterns(root):
    """`go list` patterns for the module's packages, leaving out nested modules (such as
    consumer/), vendor/ and bin/: GOPATH mode would otherwise walk into them."""
    patterns = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS and not x.startswith((".", "_"))
                         and not os.path.exists(os.path.join(d, x, "go.mod")))
        if any(f.endswith(".go") for f in files):
            patterns.append("./" + os.path.relpath(d, root) if d != root else ".")
    return patterns


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
    mod, _, requires, local = parse_gomod(read(root + "/go.mod"))
    spelled = dict(local)  # modules.txt repeats go.mod's spelling of each replacement
    local = {m: os.path.normpath(os.path.join(root, p)) for m, p in local.items()}
    shutil.rmtree(root + "/vendor", ignore_errors=True)  # GOPATH mode would use an old one
    with tempfile.TemporaryDirectory() as gp:  # list deps in GOPATH mode (no go.sum, no proxy)
        for path, target in [(mod, root), *local.items()]:
            link = os.path.join(gp, "src", path)
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(target, link)
        cwd = os.path.join(gp, "src", mod)
        env = dict(os.environ, PWD=cwd, GO111MODULE="off", GOFLAGS="",
                   GOPATH=gp + ":/usr/share/gocode")
        out = subprocess.run(
            ["go", "list", "-deps", "-test", "-f",
             "{{if not .Standard}}{{.ImportPath}}{{end}}", *own_patterns(root)],
            cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout
    # A local replacement's own vendor/ serves its imports in GOPATH mode: strip that prefix.
    pkgs = sorted({line.split()[0].split("/vendor/", 1)[-1]
                   for line in out.splitlines() if line.strip()})
    pkgs = [p for p in pkgs
            if not (p == mod or p.startswith(mod + "/") or p.endswith(".test"))]
    mods = {}
    for p in pkgs:
        owner = next((m for m in local if p == m or p.startswith(m + "/")), None)
        if owner:
            src = local[owner] + p[len(owner):]
            info = (owner, modinfo(local[owner], local[owner])[1])
        else:
            src = f"{SRC}/{p}"
            info = modinfo(src, SRC) or ("/".join(p.split("/")[:3]), None)
        os.makedirs(f"{root}/vendor/{p}")
        for f in os.listdir(src):
            if os.path.isfile(f"{src}/{f}") and not f.endswith("_test.go"):
                shutil.copy2(f"{src}/{f}", f"{root}/vendor/{p}")
        mods.setdefault(info, []).append(p)
    for m in requires:  # a requirement that provides no package is still listed
        if not any(m == k for k, _ in mods):
            mods[(m, modinfo(local.get(m, f"{SRC}/{m}"), local.get(m, SRC))[1]
                  if os.path.isdir(local.get(m, f"{SRC}/{m}")) else None)] = []
    txt = []
    for (m, g), ps in sorted(mods.items()):
        v = requires.get(m) or VERSIONS.get(m, "v0.0.0-00010101000000-000000000000")
        txt.append(f"# {m} {v}" + (f" => {spelled[m]}" if m in local else ""))
        if m in requires:
            txt.append("## explicit" + (f"; go {g}" if g else ""))
        txt += ps
    for m in sorted(local):  # replacements without a version are listed again, on their own
        txt.append(f"# {m} => {spelled[m]}")
    with open(root + "/vendor/modules.txt", "w") as f:
        f.write("\n".join(txt) + "\n")
    print(f"vendored {len(pkgs)} packages from {len(mods)} modules into {root}/vendor")


if __name__ == "__main__":
    main()
