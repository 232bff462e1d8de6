"""The test cluster's DNS: A records for Services and StatefulSet pods, read from the API
server on every query (tests/k8s/cluster.sh runs it on the node's address, port 53, and the
kubelet points pods at it).

  NAME.NS.svc.cluster.local        a Service's cluster IP; a headless one's endpoint addresses
  HOST.NAME.NS.svc.cluster.local   the endpoint address whose hostname is HOST (StatefulSet pods)

Other names under cluster.local are NXDOMAIN; names outside it are REFUSED (the test cluster
has no upstream). Only A queries get addresses; other types get an empty answer.

  python3 dns.py ADDRESS API_URL CA_FILE TOKEN_FILE
"""

import json
import socket
import ssl
import struct
import sys
import urllib.request

DOMAIN = "svc.cluster.local"
NOERROR, NXDOMAIN, REFUSED = 0, 3, 5


def api(base, context, token, path):
    req = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, context=context, timeout=5) as resp:
            return json.load(resp)
    except urllib.error.HTTPError:
        return None


def endpoint_addresses(endpoints, hostname=None):
    out = []
    for subset in (endpoints or {}).get("subsets") or []:
        for key in ("addresses", "notReadyAddresses"):
            for a in subset.get(key) or []:
                if hostname is None or a.get("hostname") == hostname:
                    out.append(a["ip"])
    return out


def resolve(name, lookup):
    """The IPv4 addresses of NAME, or None when it does not exist."""
    name = name.rstrip(".").lower()
    if not name.endswith("." + DOMAIN):
        return None
    labels = name[: -len(DOMAIN) - 1].split(".")
    if len(labels) == 2:
        svc, ns = labels
        service = lookup(f"/api/v1/namespaces/{ns}/services/{svc}")
        if not service:
            return None
        ip = service["spec"].get("clusterIP")
        if ip and ip != "None":
            return [ip]
        return endpoint_addresses(lookup(f"/api/v1/namespaces/{ns}/endpoints/{svc}"))
    if len(labels) == 3:
        host, svc, ns = labels
        found = endpoint_addresses(lookup(f"/api/v1/namespaces/{ns}/endpoints/{svc}"), host)
        return found or None
    return None


def answer(query, lookup):
    ident, _flags, qdcount = struct.unpack("!HHH", query[:6])
    if qdcount != 1:
        return None
    pos, labels = 12, []
    while query[pos] != 0:
        n = query[pos]
        labels.append(query[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    qtype, _qclass = struct.unpack("!HH", query[pos + 1 : pos + 5])
    question = query[12 : pos + 5]
    name = ".".join(labels)
    if not name.lower().rstrip(".").endswith("cluster.local"):
        code, addresses = REFUSED, []
    else:
        found = resolve(name, lookup)
        code, addresses = (NXDOMAIN, []) if found is None else (NOERROR, found)
    if qtype != 1:
        addresses = []
    records = b"".join(
        b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton(ip) for ip in addresses
    )
    flags = 0x8000 | 0x0400 | 0x0100 | 0x0080 | code  # response, authoritative, RD, RA
    return struct.pack("!HHHHHH", ident, flags, 1, len(addresses), 0, 0) + question + records


def main():
    address, base, ca, token_file = sys.argv[1:5]
    context = ssl.create_default_context(cafile=ca)
    with open(token_file) as f:
        token = f.read().strip()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 53))
    while True:
        query, peer = sock.recvfrom(512)
        try:
            reply = answer(query, lambda path: api(base, context, token, path))
        except Exception as e:  # a malformed query or an API error: no answer
            print(f"dns.py: {e}", file=sys.stderr, flush=True)
            continue
        if reply:
            sock.sendto(reply, peer)


if __name__ == "__main__":
    main()
