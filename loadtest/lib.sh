# Shared by the benchmark scripts (side-by-side.sh, sre-side-by-side.sh, latency-half-load.sh, metering-ab.sh, pipeline-bench.sh); sourced,
# not run. Free ports, waiting for a listener, and the "open" accounts every script loads: the
# portrait segmentation group in QPS mode, far above any load, so every call is admitted.

# A free TCP port on loopback.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits up to 20 s for something to listen on loopback port $1.
wait_port() {
  for _ in $(seq 1 200); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 did not open"; exit 1
}

# open_accounts N UIN_BASE NAME_PREFIX SERVICES: N accounts, UINs UIN_BASE+1.., entitlements.toml.
open_accounts() {
  for i in $(seq 1 "$1"); do
    printf '[[account]]\nuin = %d\nname = "%s-%d"\nservices = %s\npostpaid = true\n\n[[account.mode]]\ngroup = "bda.segment"\nmode = "qps"\nquantity = 10000000\n\n' $(($2 + i)) "$3" "$i" "$4"
  done
}

# credentials N UIN_BASE ID_PREFIX KEY_PREFIX: credentials.toml entries ID_PREFIX001.. for them.
credentials() {
  for i in $(seq 1 "$1"); do
    printf '[[credential]]\nsecret_id = "%s%03d"\nsecret_key = "%s%03d"\nuin = %d\n\n' "$3" "$i" "$4" "$i" $(($2 + i))
  done
}

# segment_streams N NAME_PREFIX ID_PREFIX CONCURRENCY: closed-loop scenario streams, one per
# credential, calling SegmentPortraitPic with an empty stub image (small answers).
segment_streams() {
  for i in $(seq 1 "$1"); do
    printf '[[stream]]\nname = "%s-%d"\nsecret_id = "%s%03d"\nservice = "bda"\naction = "SegmentPortraitPic"\nmode = "closed"\nconcurrency = %d\n[stream.headers]\nX-Stub-Image-Bytes = "0"\n\n' "$2" "$i" "$3" "$i" "$4"
  done
}

# limited_streams N ID_PREFIX CONNECTIONS: closed-loop streams of GeneralBasicOCR, one per
# credential ID_PREFIX001.., sharing CONNECTIONS between them (the overload scenarios).
limited_streams() {
  for i in $(seq 1 "$1"); do
    printf '[[stream]]\nname = "limited-%d"\nsecret_id = "%s%03d"\nservice = "ocr"\naction = "GeneralBasicOCR"\nmode = "closed"\nconcurrency = %d\n\n' "$i" "$2" "$i" $(( ($3 + $1 - 1) / $1 ))
  done
}
