#!/usr/bin/env bash
# `--compress zstd` against `zstd -T0` and AVML's snappy, on one LiME image:
# seconds (wall, user+sys CPU), peak RSS and output size per command, each
# run REPS times, tools alternating; outputs on the image's filesystem (put
# it on tmpfs to measure the CPU, not a disk). It is not a test.
#
#   testing/compress/zstd_bench.sh IMAGE.lime [REPS]        # default 3
#
# Env: PMEM_BIN (default: the static build), PMEM_BASE (a second pmem binary,
# e.g. one from before the change, measured the same way), AVML (default:
# the test harness's build under $PMEM_CACHE/guest/avml/bin/avml).
# IMAGE: a real guest image, or testing/compress/mix_image.py's mix.
set -euo pipefail
cd "$(dirname "$0")/../.."
image=$1
reps=${2:-3}
pmem=${PMEM_BIN:-target/x86_64-unknown-linux-musl/release/pmem}
avml=${AVML:-${PMEM_CACHE:-$HOME/.cache/pmem}/guest/avml/bin/avml}
out=$(dirname "$image")/bench.out
cpus=$(nproc)
echo "# $(date -u +%FT%TZ) host: $cpus CPUs, $(uptime | sed 's/.*load/load/')"
echo "# image: $image, $(stat -c %s "$image") bytes; $("$pmem" --version 2>/dev/null || true)"

declare -a names cmds
add() { names+=("$1"); cmds+=("$2"); }
conv="convert -q --arch x86_64 --force --no-hash --format lime --compress zstd"
add "pmem zstd, $cpus CPUs (workers: one per CPU)" "$pmem $conv $image $out"
add "pmem zstd, pinned to 1 CPU (taskset -c 0: one worker)" "taskset -c 0 $pmem $conv $image $out"
add "pmem zstd, $cpus CPUs, default hash (BLAKE3)" \
    "$pmem convert -q --arch x86_64 --force --format lime --compress zstd $image $out"
if [[ -n "${PMEM_BASE:-}" ]]; then
    add "baseline pmem zstd, $cpus CPUs" "$PMEM_BASE $conv $image $out"
fi
add "zstd -1 -T0 (level 1: ruzstd's Fastest)" "zstd -q -f -1 -T0 $image -o $out"
add "zstd -1 -T1" "zstd -q -f -1 -T1 $image -o $out"
add "zstd -T0 (default level 3)" "zstd -q -f -T0 $image -o $out"
if [[ -x "$avml" ]]; then
    add "avml convert lime_compressed (snappy)" \
        "$avml convert --source-format lime --format lime_compressed $image $out"
    add "pmem --compress snappy (AVML format)" \
        "$pmem convert -q --arch x86_64 --force --no-hash --format lime --compress snappy $image $out"
fi

declare -A wall cpu rss size
for ((r = 0; r < reps; r++)); do
    order=$(seq 0 $((${#names[@]} - 1)))
    ((r % 2)) && order=$(echo "$order" | tac)
    for i in $order; do
        rm -f "$out" "$out.json"
        sync
        t=$( { /usr/bin/time -f "%e %U %S %M" ${cmds[$i]} >/dev/null; } 2>&1 | tail -1)
        read -r e u s m <<<"$t"
        wall[$i]+="$e "
        cpu[$i]+="$(echo "$u + $s" | bc) "
        rss[$i]+="$((m / 1024)) "
        size[$i]=$(stat -c %s "$out")
    done
done
rm -f "$out" "$out.json"

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
range() { tr ' ' '\n' | grep . | sort -n | awk 'NR==1{lo=$1} {hi=$1} END {print lo "-" hi}'; }
in=$(stat -c %s "$image")
echo
echo "| command | seconds (median, min-max) | CPU s (user+sys) | MiB/s | output MiB | ratio | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|"
for i in $(seq 0 $((${#names[@]} - 1))); do
    w=$(echo "${wall[$i]}" | median)
    printf '| %s | %s (%s) | %s | %.0f | %.1f | %.3f | %s |\n' "${names[$i]}" "$w" \
        "$(echo "${wall[$i]}" | range)" "$(echo "${cpu[$i]}" | median)" \
        "$(echo "$in / 1048576 / $w" | bc -l)" "$(echo "${size[$i]} / 1048576" | bc -l)" \
        "$(echo "${size[$i]} / $in" | bc -l)" "$(echo "${rss[$i]}" | median)"
done
echo "# end $(date -u +%FT%TZ): $(uptime | sed 's/.*load/load/')"
