#!/usr/bin/env python3
"""Craft stemcell tarballs (good and hostile) for the reader tests.

Written with Python's tarfile and gzip on purpose: the tests must not rely on
opsbake's own writers to produce their inputs. Usage: craft.py SPEC.json

SPEC:
{
  "out": "/path/stemcell.tgz",
  "gzip": true,                      # false: a plain tar
  "truncate": 1234,                  # optional: cut the result to this many bytes
  "members": [                       # outer members, in order
    {"name": "stemcell.MF", "text": "... {SHA1} ..."},   # {SHA1}: sha1 of the image member
    {"name": "image", "image_file": "/path/image.tgz"},  # an image built elsewhere (GNU tar)
    {"name": "image", "inner": [MEMBER...]},              # an image built here
    {"name": "packages.txt", "text": "...", "declared_size": 10737418240}
  ]
}
MEMBER: {"name": ..., "type": "file|dir|symlink|hardlink|chr|fifo",
         "text": ..., "file": path, "zeros": n, "link": target, "declared_size": n}
"""

import gzip
import hashlib
import io
import json
import sys
import tarfile

BLOCK = 512


def member_bytes(m):
    if "text" in m:
        return m["text"].encode()
    if "file" in m:
        with open(m["file"], "rb") as f:
            return f.read()
    if "zeros" in m:
        return bytes(m["zeros"])
    return b""


def build_tar(members):
    out = io.BytesIO()
    for m in members:
        ti = tarfile.TarInfo(m["name"])
        ti.mtime = 0
        ti.mode = 0o644
        typ = m.get("type", "file")
        data = b""
        if typ == "file":
            data = member_bytes(m)
            ti.size = len(data)
        elif typ == "dir":
            ti.type = tarfile.DIRTYPE
            ti.mode = 0o755
        elif typ == "symlink":
            ti.type = tarfile.SYMTYPE
            ti.linkname = m["link"]
        elif typ == "hardlink":
            ti.type = tarfile.LNKTYPE
            ti.linkname = m["link"]
        elif typ == "chr":
            ti.type = tarfile.CHRTYPE
            ti.devmajor, ti.devminor = 1, 3
        elif typ == "fifo":
            ti.type = tarfile.FIFOTYPE
        else:
            raise SystemExit("unknown member type " + typ)
        if "declared_size" in m:
            # A header that claims more than follows: what a bomb looks like
            # to a reader that trusts sizes.
            ti.size = m["declared_size"]
        out.write(ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
        out.write(data)
        pad = (-len(data)) % BLOCK
        out.write(b"\0" * pad)
    out.write(b"\0" * (2 * BLOCK))
    return out.getvalue()


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    image = b""
    members = []
    for m in spec["members"]:
        m = dict(m)
        if "image_file" in m:
            with open(m.pop("image_file"), "rb") as f:
                m["bytes"] = f.read()
        elif "inner" in m:
            m["bytes"] = gzip.compress(build_tar(m.pop("inner")), mtime=0)
        elif m["name"] == "image" and "text" in m:
            m["bytes"] = m.pop("text").encode()
        if m["name"] == "image" and "bytes" in m:
            image = m["bytes"]
        members.append(m)
    sha1 = hashlib.sha1(image).hexdigest()
    outer = []
    for m in members:
        m = dict(m)
        if "bytes" in m:
            m["text"] = None
            data = m.pop("bytes")
        elif "text" in m:
            data = m["text"].replace("{SHA1}", sha1).encode()
        else:
            data = b""
        m.pop("text", None)
        m["_data"] = data
        outer.append(m)
    buf = io.BytesIO()
    for m in outer:
        ti = tarfile.TarInfo(m["name"])
        ti.mtime = 0
        ti.mode = 0o644
        typ = m.get("type", "file")
        if typ == "symlink":
            ti.type = tarfile.SYMTYPE
            ti.linkname = m["link"]
            data = b""
        else:
            data = m["_data"]
            ti.size = len(data)
        if "declared_size" in m:
            ti.size = m["declared_size"]
        buf.write(ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
        buf.write(data)
        buf.write(b"\0" * ((-len(data)) % BLOCK))
    buf.write(b"\0" * (2 * BLOCK))
    result = buf.getvalue()
    if spec.get("gzip", True):
        result = gzip.compress(result, compresslevel=6, mtime=0)
    if "truncate" in spec:
        result = result[: spec["truncate"]]
    with open(spec["out"], "wb") as f:
        f.write(result)
    print(sha1)


if __name__ == "__main__":
    main()
