#!/bin/bash
# measure.sh: proxy CPU per request and per MB, for examples/proxy with the
# core's relay, with -no-relay (RAW_RX and Write), and for the stdlib
# goroutine-pair proxy in main_test.go, on the same upstreams.
#
#	D=5 ROUNDS=2 examples/proxy/measure.sh     (from the module root; needs wrk)
#
# Proxies run GOMAXPROCS=1 on CPU 1; wrk, the load and the upstreams
# (examples/httpd, examples/echo) on CPU 0. A proxy's CPU is user+system
# from /proc/PID/stat over the run.
set -e
bin=$(mktemp -d)
go build -o "$bin/proxy" ./examples/proxy
go build -o "$bin/httpd" ./examples/httpd
go build -o "$bin/echo" ./examples/echo
go test -c -o "$bin/proxy.test" ./examples/proxy
go build -o "$bin/bench" ./bench
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; } # clock ticks, 1/100 s
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$bin"' EXIT
taskset -c 0 "$bin/httpd" -evlib epoll -addr 127.0.0.1:19000 2>/dev/null & pids+=($!)
taskset -c 0 "$bin/echo" -evlib epoll -addr 127.0.0.1:19001 2>/dev/null & pids+=($!)
proxy() { # name port upstream-port flags...
	local name=$1 port=$2 up=$3
	shift 3
	if [ "$name" = stdlib ]; then
		PROXY_STDLIB=127.0.0.1:$port,127.0.0.1:$up GOMAXPROCS=1 taskset -c 1 "$bin/proxy.test" -test.run StdlibProxyServe -test.timeout 0 >/dev/null 2>&1 &
	else
		GOMAXPROCS=1 taskset -c 1 "$bin/proxy" -evlib epoll -listen 127.0.0.1:$port -upstream 127.0.0.1:$up "$@" 2>/dev/null &
	fi
	pids+=($!)
	eval "pid_${name//-/_}_$up=$!"
}
for up in 19000 19001; do
	off=$((up - 19000))
	proxy relay $((18080 + 10 * off)) $up
	proxy no-relay $((18081 + 10 * off)) $up -no-relay
	proxy stdlib $((18082 + 10 * off)) $up
done
sleep 1
D=${D:-5}
for round in $(seq "${ROUNDS:-2}"); do
	i=0
	for name in relay no-relay stdlib; do
		pid=$(eval echo "\$pid_${name//-/_}_19000")
		c0=$(cpu "$pid")
		out=$(taskset -c 0 wrk -t1 -c50 -d${D}s http://127.0.0.1:$((18080 + i))/)
		c1=$(cpu "$pid")
		req=$(echo "$out" | awk '/requests in/{print $1}')
		rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
		echo "round $round wrk -c50 via $name: $rps req/s, proxy $(awk -v c=$((c1 - c0)) -v r="$req" 'BEGIN{printf "%.2f", c*10000/r}') µs CPU/request"
		i=$((i + 1))
	done
	i=0
	for name in relay no-relay stdlib; do
		pid=$(eval echo "\$pid_${name//-/_}_19001")
		c0=$(cpu "$pid")
		out=$(taskset -c 0 "$bin/bench" -target 127.0.0.1:$((18090 + i)) -scenarios stream -warmup 0s -duration ${D}s -stream-conns 8 -pin=false 2>&1)
		c1=$(cpu "$pid")
		mbs=$(echo "$out" | awk '/1\/1 target/ {print $3}')
		echo "round $round stream via $name: $mbs MB/s, proxy $(awk -v c=$(((c1 - c0) * 10)) -v m="$mbs" -v d="$D" 'BEGIN{printf "%.2f", c/(m*d)}') ms CPU/MB"
		i=$((i + 1))
	done
done
