set -u
export JAX_MOE_COMMIT=f821c1c
R=$OUT
A="--models deepseek-v3,gpt-oss-120b,qwen3-30b-a3b,mixtral-8x7b --weights nvfp4 --tokens 4096 --reps 3 --tactics default"
./prebuilt/stage_timer_stamps $A > $R/stamps.txt 2>&1; echo "stamps rc $?"
./prebuilt/stage_timer_nodecode $A > $R/nodecode.txt 2>&1; echo "nodecode rc $?"
grep -E "pipeline|stamps gemm" $R/stamps.txt $R/nodecode.txt | cut -c1-330
cp prebuilt/stage_timer_stamps /tmp/stage_timer
STALL_KERNELS=WgmmaRs STALL_COUNT=1 STALL_TOP=40 STALL_ARGS="--models deepseek-v3 --weights nvfp4 --tokens 4096 --reps 1 --tactics default" OUT=$R/stalls bash benchmarks/gpu_check.sh stalls > $R/stalls_log.txt 2>&1; echo "stalls rc $?"
head -60 $R/stalls/stalls.txt
cd $OUT && tar czf ../diag.tgz . && mv ../diag.tgz $OUT/diag.tgz
