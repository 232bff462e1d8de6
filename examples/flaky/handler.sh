#!/bin/sh
# A function that misbehaves on request, to see how fwatchdog answers when handlers go wrong.
#
#   ?sleep=S    sleep S seconds before answering (exceed exec_timeout to see the timeout reply)
#   ?exit=N     write a complaint to stderr and exit with status N (N > 0 gives a 500)
#   ?orphan=1   leave a background process holding stdout open; fwatchdog still answers as soon
#               as this script exits and kills the leftover with the rest of the process group
#
# Parameters combine: ?sleep=2&exit=3 sleeps, then fails.
sleep_for=0
exit_code=0
orphan=0
old_ifs=$IFS
IFS='&'
for pair in $Http_Query; do
  case "$pair" in
    sleep=*) sleep_for=${pair#sleep=} ;;
    exit=*) exit_code=${pair#exit=} ;;
    orphan=*) orphan=${pair#orphan=} ;;
  esac
done
IFS=$old_ifs

cat >/dev/null
if [ "$orphan" = 1 ]; then
  sleep 300 &
  echo "left pid $! behind"
fi
if [ "$sleep_for" != 0 ]; then
  sleep "$sleep_for"
fi
if [ "$exit_code" != 0 ]; then
  echo "flaky: failing with exit status $exit_code as asked" >&2
  exit "$exit_code"
fi
echo "ok"
