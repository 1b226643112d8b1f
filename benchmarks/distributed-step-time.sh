#!/usr/bin/env bash
# Step time of data-parallel MDT-dist, 1 process vs 2 MPI ranks, on the worker program of the distributed tests
# (MLP teacher/student, VM + VD, AdamW, EMA, clipping). Prints the worker's summary line per configuration:
# step_ms = mean wall time of a training step (steps 3..N), allreduce_ms = time inside gradient/metric all-reduce
# calls per step (it includes waiting for the slower rank). Needs MPICH (apt-get install mpich libmpich-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
HIDDEN=${HIDDEN:-256} LAYERS=${LAYERS:-3} BATCH=${BATCH:-512} STEPS=${STEPS:-30} REPEAT=${REPEAT:-2}
dotnet build -c Release tests/MdtDist.Distributed.Worker -v q -nologo >/dev/null
W=tests/MdtDist.Distributed.Worker/bin/Release/net10.0/MdtDist.Distributed.Worker.dll
common="steps=$STEPS hidden=$HIDDEN layers=$LAYERS batch=$BATCH"
# the configurations are interleaved REPEAT times, so that drifting machine load hits all of them alike
for r in $(seq "$REPEAT"); do
  echo "# round $r: 1 process, 1 thread";  dotnet "$W" mode=single-train $common threads=1
  echo "# round $r: 1 process, 2 threads"; dotnet "$W" mode=single-train $common threads=2
  echo "# round $r: 2 ranks x 1 thread (global batch $BATCH = 2 x $((BATCH / 2)))"; mpiexec.mpich -n 2 dotnet "$W" mode=train $common threads=1
done
