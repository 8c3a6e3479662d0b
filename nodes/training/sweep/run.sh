# A sweep of training recipes on a GPU machine (nodes/training/README.md, "Sweeps on a GPU"). From the repository
# root, with the folder that prepare.py wrote carried along:
#
#   COMMON="--init nodes/guards/offline/artifact --pooling attention --epochs 2" \
#       bash nodes/training/sweep/run.sh .sweep "D1:--documents 1500 --train-seed 1" "D2:--documents 1500 --train-seed 2"
#
# Each candidate NAME:FLAGS is trained with COMMON and its FLAGS (without the example classifier's negatives: they
# need the whole encoder), its sentence margins are chosen on its held-out rows and written into its config.json (in
# float32, as on a CPU), and the padding probe is measured with them; EVALUATE adds flags to that evaluation (e.g.
# "--match-deployed-fpr 0.0515 0.0426", which first moves its thresholds). CONC candidates run at a time (default 4);
# after LIMIT_S seconds (default 400) the sweep stops waiting. summary.py then writes the numbers and the best
# three candidates' weights to $OUT.
set -u
CARRY=$(cd "$1" && pwd) || exit 1
shift
DEVICE=${DEVICE:-cuda} CONC=${CONC:-4} LIMIT_S=${LIMIT_S:-400} PY=${PY:-python3} COMMON=${COMMON:-} EVALUATE=${EVALUATE:-}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
if [ -d "$CARRY/whl" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/sweep-site \
        "$CARRY"/whl/*.whl || exit 1
fi
# the repository's folders as the guardgraph package, without installing it
mkdir -p /tmp/sweep-pkg/guardgraph /tmp/sweep-data /tmp/sweep-runs
for folder in graph nodes policies; do ln -sfn "$PWD/$folder" /tmp/sweep-pkg/guardgraph/$folder; done
export PYTHONPATH=/tmp/sweep-site:/tmp/sweep-pkg:$PWD GUARDGRAPH_MINILM_DIR=$CARRY/base
tar -C /tmp/sweep-data -xJf "$CARRY/train.tar.xz"
RUNS=/tmp/sweep-runs
TRAIN="$PY -m guardgraph.nodes.training.train --datasets /tmp/sweep-data/train --replies $CARRY/replies.jsonl
    --cached-replies-only --device $DEVICE --threads 3"

candidate() {
    local name=${1%%:*} flags=${1#*:}
    $TRAIN $COMMON $flags --no-benign-negatives --out $RUNS/$name >$RUNS/$name.train.log 2>&1 ||
        { echo "$name: training failed"; tail -3 $RUNS/$name.train.log; return; }
    $TRAIN $COMMON $flags --evaluate $RUNS/$name --write-margins --guard-dtype float32 $EVALUATE \
        >$RUNS/$name/evaluate.json 2>$RUNS/$name.evaluate.log ||
        { echo "$name: evaluation failed"; tail -3 $RUNS/$name.evaluate.log; return; }
    $PY -m tests.padding_probe --measure $RUNS/$name $DEVICE >$RUNS/$name/probe.json 2>$RUNS/$name.probe.log ||
        { echo "$name: probe failed"; tail -3 $RUNS/$name.probe.log; return; }
    echo "$name: done"
}

start=$(date +%s)
for spec in "$@"; do
    while [ "$(jobs -rp | wc -l)" -ge "$CONC" ]; do sleep 2; done
    candidate "$spec" &
done
while [ "$(jobs -rp | wc -l)" -gt 0 ] && [ $(($(date +%s) - start)) -lt "$LIMIT_S" ]; do sleep 2; done
echo "sweep: $(($(date +%s) - start)) s"
$PY -m guardgraph.nodes.training.sweep.summary pack $RUNS "$OUT"
