#!/usr/bin/env bash
# sacct for a SLURM cluster without accounting (the local test cluster).
#
# submitit asks `sacct -o JobID,State,NodeList --parsable2 -j ID [-j ID ...]` to learn the
# state of its jobs; without accounting the real sacct fails and submitit then waits
# forever on a job that died before writing its result. This answers the same question
# from `squeue -t all` (the controller keeps finished jobs for MinJobAge seconds).
# Put it first on PATH only for such clusters (local_cluster.sh env does that).
set -u
ids=()
while [ $# -gt 0 ]; do
    case "$1" in
        -j|--jobs) ids+=("${2//,/ }"); shift 2 ;;
        -j*) ids+=("${1#-j}"); shift ;;
        --jobs=*) ids+=("${1#--jobs=}"); shift ;;
        -o|--format) shift 2 ;;   # the fields are always JobID|State|NodeList
        *) shift ;;
    esac
done
echo "JobID|State|NodeList"
for id in ${ids[@]+"${ids[@]}"}; do
    # -r lists every array task on its own line (123_0, 123_1...); an unknown id prints nothing.
    squeue -t all -r -h -o '%i|%T|%N' -j "$id" 2>/dev/null
done
exit 0
