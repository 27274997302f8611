#!/bin/bash
# translate 100 images of 256x256 (demo student architecture, mobile_resnet_9blocks ngf 16), in turns:
# eager, --fast with an empty inductor cache (what a first run pays), --fast again with that cache (warm)
cd /work/main
for round in 1 2 3; do
  cache=/tmp/bench_translate/inductor_cache_$round; rm -rf $cache
  for mode in eager fast_cold fast_warm; do
    out=/tmp/bench_translate/out3_${mode}_${round}; rm -rf $out
    flags=""; [ $mode != eager ] && flags="--fast"
    l0=$(cut -d' ' -f1 /proc/loadavg)
    start=$(date +%s.%N)
    TORCHINDUCTOR_CACHE_DIR=$cache .venv/bin/ackd-fast translate /tmp/bench_translate/student.pth --input /tmp/bench_translate/inputs --output $out --no-progress $flags > /tmp/bench_translate/r3_${mode}_${round}.json 2> /tmp/bench_translate/e3_${mode}_${round}.txt
    end=$(date +%s.%N)
    echo "$mode $round wall $(echo "$end - $start" | bc) load_before $l0 load_after $(cut -d' ' -f1 /proc/loadavg) $(python3 -c "import json;r=json.load(open('/tmp/bench_translate/r3_${mode}_${round}.json'));print('loop', round(r['seconds'],2), 'setup', round(r['setup_seconds'],2))")"
  done
done
