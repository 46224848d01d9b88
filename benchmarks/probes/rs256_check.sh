#!/usr/bin/env bash
# One device call (carried extension + stage timer): the register-A GPU tests, then the stage
# timer's prefill rows with the 256-token tile next to the default. Results: $OUT/rs256.tgz.
set -u
R=$OUT
OUT=$R/gpu timeout ${GPU_TIMEOUT:-300} bash benchmarks/gpu_check.sh gpu -- \
  -k "${GPU_K:-wgmma_rs or rs256 or staged_epilogue or wgmma_family_model or default}" > $R/gpu_summary.txt 2>&1
cat $R/gpu_summary.txt | tail -5
./prebuilt/stage_timer --models deepseek-v3,gpt-oss-120b,qwen3-30b-a3b,mixtral-8x7b --weights ${TIMER_WEIGHTS:-nvfp4} \
  --tokens ${TIMER_TOKENS:-1024,2048,4096,16384} --reps ${TIMER_REPS:-10} --tactics default,cuda_wgmma_rsp_t256 > $R/timer.txt 2>&1
echo "timer rc $?"; grep -E "pipeline" $R/timer.txt | cut -c1-200
cd $R && tar czf ../rs256.tgz . && mv ../rs256.tgz $R/
