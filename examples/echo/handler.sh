#!/bin/sh
# The smallest useful function: say what was asked for, then echo the request body.
# fwatchdog sets Http_Method, Http_Path and Http_Query (cgi_headers=true, the default).
printf 'method=%s path=%s query=%s\n' "$Http_Method" "$Http_Path" "$Http_Query"
exec cat
