#!/usr/bin/env bash
# The baseline for bench/bootstrap.py: the same three sandboxed tcc builds as
# `invoke bootstrap --compiler tcc --force`, written as a plain shell script (no
# manifests, no hashing, no cache, no UI).
#
# usage: plain_bootstrap.sh ROOTFS SOURCE_TREE WORKDIR
set -euo pipefail
rootfs=$1 src=$2 work=$3
prefix=/app/vendor/tcc
rm -rf "$work"; mkdir -p "$work"
prev=""
for n in 1 2 3; do
  w=$work/s$n
  mkdir -p "$w/build/home" "$w/tree"
  cp -a "$src/." "$w/build/src"
  if [ -z "$prev" ]; then builder=gcc; else builder=$prefix/bin/tcc; fi
  run() {
    local out_mode=$1; shift
    args=(--ro-bind "$rootfs" / --proc /proc --dev /dev --tmpfs /tmp
          --bind "$w/build" /build "$out_mode" "$w/tree" /build/out)
    [ -n "$prev" ] && args+=(--ro-bind "$prev$prefix" "$prefix")
    bwrap "${args[@]}" --unshare-all --hostname selfhost --die-with-parent --new-session \
      --clearenv --chdir /build/src -- /usr/bin/env -i \
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/build/home \
      LC_ALL=C.UTF-8 TZ=UTC SOURCE_DATE_EPOCH=1597363200 PREFIX=$prefix DESTDIR=/build/out \
      SRC=/build/src BUILDER=$builder JOBS=$(nproc) STAGE=$n \
      /bin/sh -c 'umask 022 && exec "$@"' sh /bin/sh -ec "$1" >>"$w/log" 2>&1
  }
  run --bind './configure --prefix=$PREFIX --cc=$BUILDER && make -j$JOBS'
  run --bind 'make install DESTDIR=$DESTDIR'
  run --ro-bind 'make test'
  rm -rf "$w/build"
  prev=$w/tree
done
cmp "$work/s2/tree$prefix/bin/tcc" "$work/s3/tree$prefix/bin/tcc" && echo "fixpoint: stage2 == stage3"
