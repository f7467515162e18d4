"""Runs ../main.py on the host's CPython against fakes of the board's modules
(time with a virtual clock, machine, network, umqtt.simple, ntptime, ssl)
and checks its behaviour in one scenario:

  python3 host_sim.py SCENARIO      (prints "ok" or fails with a message)
  python3 host_sim.py --list        (the scenarios)

The fakes follow what main.py relies on, including umqtt.simple's habit of
leaving its socket blocking without a timeout after each read. Virtual time
only moves when the program sleeps or a fake call takes time, so a run of
minutes takes milliseconds. Not a substitute for a board: it checks the
program's logic (schedule, backoff, timeouts, watchdog feeding, TLS
settings, ts), not MicroPython, lwIP or mbedTLS.
"""
import json
import os
import sys
import tempfile
import types

MAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "main.py")
HOST = "gateway.lan"
INTERVAL_S = 10
SOCKET_TIMEOUT_S = 5
WDT_TIMEOUT_MS = 8000


class Fail(Exception):
    pass


class End(Exception):
    """Virtual time is up: stops main()'s loop."""


def check(ok, msg):
    if not ok:
        raise Fail(msg)


class Clock:
    def __init__(self, end_ms):
        self.ms = 1000
        self.end_ms = end_ms

    def advance(self, ms):
        self.ms += ms
        if self.ms >= self.end_ms:
            raise End()


class World:
    """What the scenario controls and what the fakes record."""

    def __init__(self, end_s):
        self.clock = Clock(end_s * 1000)
        self.wifi_up_at = 0  # virtual ms from which Wi-Fi can connect
        self.ntp_ok = True
        self.attempts = 0  # MQTT connects tried
        self.connects = []  # virtual ms of each accepted MQTT connect
        self.refuse = False  # CONNACK refusal
        self.drop_after = None  # ms after connect: the next call fails
        self.silent_from = None  # ms: from then the broker never answers
        self.stall = None  # (at ms, for ms): one publish blocks that long
        self.published = []  # (virtual ms, topic, payload dict or bytes)
        self.feeds = []  # virtual ms of each watchdog feed
        self.wdt_timeout = None
        self.timeouts_seen = []  # socket timeout in force at each wait
        self.tls = []  # (verify_mode, ca, server_hostname)
        self.old_umqtt = False  # umqtt.simple before connect(timeout) and SSL contexts


W = None


def fake_time():
    m = types.ModuleType("time")
    m.ticks_ms = lambda: W.clock.ms % (1 << 30)
    m.ticks_add = lambda t, d: (t + d) % (1 << 30)

    def ticks_diff(a, b):
        d = (a - b) % (1 << 30)
        return d - (1 << 30) if d >= (1 << 29) else d

    m.ticks_diff = ticks_diff
    m.sleep_ms = lambda ms: W.clock.advance(ms)
    m.time = lambda: 1764115200 + W.clock.ms // 1000
    m.gmtime = lambda t=0: (1970, 1, 1, 0, 0, 0, 3, 1)
    return m


def fake_machine():
    m = types.ModuleType("machine")

    class Pin:
        OUT = 1

        def __init__(self, *a):
            self.v = 0

        def value(self, v=None):
            if v is not None:
                self.v = v
            return self.v

    class WDT:
        def __init__(self, timeout):
            W.wdt_timeout = timeout
            W.feeds.append(W.clock.ms)

        def feed(self):
            W.feeds.append(W.clock.ms)

    m.Pin = Pin
    m.WDT = WDT
    m.ADC = lambda *a: None
    m.reset_cause = lambda: 1
    return m


def fake_network():
    m = types.ModuleType("network")
    m.STA_IF = 0

    class WLAN:
        def __init__(self, *a):
            self.connecting = False

        def active(self, *a):
            return True

        def connect(self, ssid, password):
            self.connecting = True

        def disconnect(self):
            self.connecting = False

        def isconnected(self):
            return self.connecting and W.clock.ms >= W.wifi_up_at

        def ifconfig(self):
            return ("192.168.1.42", "255.255.255.0", "192.168.1.1", "192.168.1.1")

    m.WLAN = WLAN
    return m


class Sock:
    """A TCP socket: the timeout in force, as settimeout/setblocking set it."""

    def __init__(self):
        self.timeout = None
        self.closed = False

    def settimeout(self, t):
        self.timeout = t

    def setblocking(self, flag):
        self.timeout = None if flag else 0

    def close(self):
        self.closed = True


class TLSSock:
    """MicroPython's TLS socket: setblocking goes to the TCP socket, and
    there is no settimeout."""

    def __init__(self, raw):
        self.raw = raw

    def setblocking(self, flag):
        self.raw.setblocking(flag)

    def close(self):
        self.raw.close()


def fake_umqtt():
    pkg = types.ModuleType("umqtt")
    m = types.ModuleType("umqtt.simple")

    class MQTTException(Exception):
        pass

    class MQTTClient:
        def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0, ssl=None):
            check(server == HOST, "server %r" % server)
            self.ssl = ssl
            self.sock = None
            self.raw = None
            self.cb = None

        def set_last_will(self, topic, msg, retain=False, qos=0):
            check(topic.endswith(b"/status") and msg == b"offline" and retain and qos == 1, "last will")

        def set_callback(self, f):
            self.cb = f

        def _wait(self, what):
            # A wait for the broker, like umqtt's wait_msg(): bounded by the
            # socket's timeout, then left blocking without one.
            t = self.raw.timeout
            W.timeouts_seen.append(t)
            now = W.clock.ms
            if W.silent_from is not None and now >= W.silent_from:
                check(t, "%s waited on a silent link with no socket timeout: blocked for good" % what)
                W.clock.advance(int(t * 1000))
                raise OSError(110)  # ETIMEDOUT
            if W.drop_after is not None and now - self.connected_at >= W.drop_after:
                raise OSError(104)  # ECONNRESET
            if W.stall and W.stall[0] <= now:
                stall, W.stall = W.stall[1], None
                W.clock.advance(stall)
            self.raw.setblocking(True)

        def connect(self, clean_session=True, **kw):
            if W.old_umqtt and kw:
                raise TypeError("unexpected keyword argument 'timeout'")
            timeout = kw.get("timeout")
            check(not clean_session, "clean session")
            W.attempts += 1
            self.raw = Sock()
            self.raw.settimeout(timeout)
            self.sock = self.raw
            if self.ssl and W.old_umqtt:
                # umqtt.simple 1.3: ssl is a flag, ssl_params go to ssl.wrap_socket.
                self.sock = sys.modules["ssl"].wrap_socket(self.raw, **getattr(self, "ssl_params", {}))
            elif self.ssl:
                self.sock = self.ssl.wrap_socket(self.raw, server_hostname=HOST)
            W.timeouts_seen.append(self.raw.timeout)
            if W.silent_from is not None and W.clock.ms >= W.silent_from:
                check(timeout, "connect with no socket timeout on a silent link")
                W.clock.advance(int(timeout * 1000))
                raise OSError(110)
            if W.refuse:
                raise MQTTException(5)
            self.connected_at = W.clock.ms
            W.connects.append(W.clock.ms)
            return False

        def subscribe(self, topic, qos=0):
            check(qos == 1, "subscribe qos")
            self._wait("subscribe")

        def publish(self, topic, msg, retain=False, qos=0):
            check(qos == 1, "publish qos %d" % qos)
            self._wait("publish")
            try:
                payload = json.loads(msg)
            except ValueError:
                payload = msg
            W.published.append((W.clock.ms, topic, payload))

        def check_msg(self):
            self.sock.setblocking(False)
            if W.drop_after is not None and W.clock.ms - self.connected_at >= W.drop_after:
                raise OSError(104)
            self.sock.setblocking(True)
            return None

        def ping(self):
            check(self.raw.timeout, "ping without a socket timeout")

    m.MQTTClient = MQTTClient
    m.MQTTException = MQTTException
    pkg.simple = m
    return pkg, m


def fake_ntptime():
    m = types.ModuleType("ntptime")

    def settime():
        if not W.ntp_ok:
            raise OSError(110)

    m.settime = settime
    return m


def fake_ssl():
    m = types.ModuleType("ssl")
    m.PROTOCOL_TLS_CLIENT = 0
    m.CERT_NONE, m.CERT_OPTIONAL, m.CERT_REQUIRED = 0, 1, 2

    class SSLContext:
        def __init__(self, protocol):
            self.verify_mode = m.CERT_NONE  # MicroPython's ssl module default
            self.ca = None

        def load_verify_locations(self, cafile=None, cadata=None):
            self.ca = cadata if cadata else open(cafile, "rb").read()

        def wrap_socket(self, sock, server_hostname=None):
            W.tls.append((self.verify_mode, self.ca, server_hostname))
            return TLSSock(sock)

    def wrap_socket(sock, cert_reqs=m.CERT_NONE, cadata=None, server_hostname=None, **kw):
        W.tls.append((cert_reqs, cadata, server_hostname))
        return TLSSock(sock)

    m.SSLContext = SSLContext
    m.wrap_socket = wrap_socket
    return m


def fake_config(**over):
    m = types.ModuleType("config")
    m.WIFI_SSID, m.WIFI_PASSWORD = "net", "wifi-secret"
    m.BROKER_HOST, m.BROKER_PORT = HOST, 1883
    m.TLS_CA = None
    m.DEVICE, m.MQTT_PASSWORD = "pico-1", "secret"
    m.INTERVAL_S = INTERVAL_S
    m.SENSOR, m.DHT_PIN, m.LED_PIN = "sim", 15, "LED"
    m.NTP = True
    m.SOCKET_TIMEOUT_S = SOCKET_TIMEOUT_S
    m.WDT_TIMEOUT_MS = WDT_TIMEOUT_MS
    for k, v in over.items():
        setattr(m, k, v)
    return m


def run(end_s, setup=None, **config):
    """Runs main.py until virtual second end_s, with the World adjusted by
    setup and config.py's settings by config; returns main.py's globals."""
    global W
    W = World(end_s)
    if setup:
        setup(W)
    pkg, simple = fake_umqtt()
    sys.modules.update({
        "time": fake_time(), "machine": fake_machine(), "network": fake_network(),
        "umqtt": pkg, "umqtt.simple": simple, "ntptime": fake_ntptime(), "ssl": fake_ssl(),
        "config": fake_config(**config),
    })
    ns = {"__name__": "main"}
    with open(MAIN) as f:
        code = compile(f.read(), MAIN, "exec")
    out = sys.stdout
    sys.stdout = open(os.devnull, "w")  # main.py's prints
    try:
        exec(code, ns)
    except End:
        pass
    finally:
        sys.stdout.close()
        sys.stdout = out
    return ns


def readings():
    return [(t, p) for t, topic, p in W.published if topic.endswith(b"/telemetry")]


def check_watchdog():
    check(W.wdt_timeout == WDT_TIMEOUT_MS, "watchdog not started with WDT_TIMEOUT_MS")
    gaps = [b - a for a, b in zip(W.feeds, W.feeds[1:])]
    check(max(gaps) < WDT_TIMEOUT_MS, "watchdog not fed for %d ms" % max(gaps))


def check_timeouts():
    check(W.timeouts_seen and all(t == SOCKET_TIMEOUT_S for t in W.timeouts_seen),
          "waits without the socket timeout: %r" % sorted(set(W.timeouts_seen), key=str))


def scenario_steady():
    # Gateway up: one reading per interval, each published once, in order,
    # with ts once NTP set the clock (the first is taken at start, before
    # Wi-Fi: it has none); a boot event first; the watchdog fed.
    run(300)
    r = readings()
    check(len(W.connects) == 1, "connects %d" % len(W.connects))
    check(len(r) == 30 or len(r) == 31, "%d readings in 300 s" % len(r))
    check([p["seq"] for _, p in r] == list(range(1, len(r) + 1)), "seq")
    check("ts" not in r[0][1] and all("ts" in p for _, p in r[1:]), "ts: %r" % [p for _, p in r[:3]])
    check([topic.split(b"/")[-1] for _, topic, _ in W.published[:3]] == [b"status", b"boot", b"telemetry"],
          "first publishes %r" % W.published[:3])
    check(W.published[0][2] == b"online", "status %r" % W.published[0][2])
    check_watchdog()
    check_timeouts()


def scenario_no_ntp():
    # NTP fails: readings go without ts (the gateway's receive time stands).
    run(60, lambda w: setattr(w, "ntp_ok", False))
    r = readings()
    check(r and all("ts" not in p for _, p in r), "ts sent with an unset clock")


def scenario_stall():
    # One publish blocks for 300 s (what the watchdog is for; here nothing
    # resets): afterwards the program takes the next reading and goes on one
    # per interval, without a burst of the 30 missed ones.
    run(500, lambda w: setattr(w, "stall", (60000, 300000)), WDT_TIMEOUT_MS=0)
    # When each reading was taken: its ts (whole seconds here).
    times = [p["ts"] for _, p in readings() if "ts" in p]
    gaps = [b - a for a, b in zip(times, times[1:])]
    check(min(gaps) >= INTERVAL_S * 1000 // 2, "burst after the stall: readings taken %d ms apart" % min(gaps))
    check(max(gaps) >= 300000 and len(times) < 30, "%d readings: the missed slots were taken" % len(times))


def scenario_drops():
    # The broker accepts each connection (CONNACK, SUBACK, PUBACK of
    # "online") and drops it right after (or another board with the same
    # name takes the session): the waits grow, no tight loop. Without the
    # backoff after a drop: about 1000 connects; with it about 26 (waits
    # uniform in [0, 60 s] once grown: more than 45 is 4 sd off).
    run(600, lambda w: setattr(w, "drop_after", 1))
    n = len(W.connects)
    check(3 <= n <= 45, "%d connects in 600 s" % n)
    gaps = [b - a for a, b in zip(W.connects, W.connects[1:])]
    check(max(gaps) > 10000, "waits do not grow: %r" % gaps)
    check_watchdog()


def scenario_stable_resets():
    # Connections that last over a minute before dropping: the backoff
    # starts again from the bottom after each, so reconnects stay quick.
    run(1500, lambda w: setattr(w, "drop_after", 90000))
    gaps = [b - a for a, b in zip(W.connects, W.connects[1:])]
    check(len(gaps) >= 10 and max(gaps) < 90000 + 2000, "reconnect gaps %r" % gaps)


def scenario_refused():
    # CONNACK refused every time: backoff between attempts.
    run(600, lambda w: setattr(w, "refuse", True))
    check(not W.connects and 3 <= W.attempts <= 45, "%d attempts in 600 s" % W.attempts)
    check_watchdog()


def scenario_silent():
    # From 60 s on the gateway never answers (cable pulled): the publish
    # waiting for its PUBACK times out after SOCKET_TIMEOUT_S and the
    # program reconnects (also timing out) instead of blocking for good,
    # and keeps taking readings; the watchdog is fed throughout.
    ns = run(400, lambda w: setattr(w, "silent_from", 60000))
    check(len(W.connects) == 1, "connects %d" % len(W.connects))
    check(len(ns["queue"]) >= 25, "%d readings queued while the gateway was silent" % len(ns["queue"]))
    check_watchdog()
    check_timeouts()


def scenario_wifi_late():
    # Wi-Fi comes up after 120 s: readings are taken on schedule meanwhile
    # and all sent, in order, once it is up.
    run(300, lambda w: setattr(w, "wifi_up_at", 120000))
    r = readings()
    seqs = [p["seq"] for _, p in r]
    check(seqs == list(range(1, len(r) + 1)) and len(r) >= 29, "seqs %r" % seqs)
    first = r[0][0]
    check(first >= 120000, "published before Wi-Fi was up")
    check_watchdog()


CA = b"-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n"


def ca_file():
    f = tempfile.NamedTemporaryFile(suffix=".pem", delete=False)
    f.write(CA)
    f.close()
    return f.name


def scenario_tls():
    # TLS_CA set: the context requires a certificate signed by that CA, for
    # BROKER_HOST; the timeout is set on the TCP socket under TLS.
    path = ca_file()
    try:
        run(120, TLS_CA=path, BROKER_PORT=8883)
    finally:
        os.unlink(path)
    check(W.tls and all(t == (2, CA, HOST) for t in W.tls), "TLS settings %r" % W.tls)
    check(len(readings()) >= 11, "readings over TLS")
    check_timeouts()


def scenario_tls_silent():
    path = ca_file()
    try:
        run(300, lambda w: setattr(w, "silent_from", 60000), TLS_CA=path, BROKER_PORT=8883)
    finally:
        os.unlink(path)
    check_watchdog()
    check_timeouts()


def scenario_old_umqtt_tls():
    # An umqtt.simple from before connect(timeout=...) and SSL contexts
    # (ssl=True with ssl_params): the program still connects, and TLS still
    # verifies the certificate (ssl_params), not ssl=True's CERT_NONE.
    path = ca_file()
    try:
        run(120, lambda w: setattr(w, "old_umqtt", True), TLS_CA=path, BROKER_PORT=8883)
    finally:
        os.unlink(path)
    check(W.tls and all(t == (2, CA, HOST) for t in W.tls), "TLS settings %r" % W.tls)
    check(len(readings()) >= 11, "readings over TLS")
    check_watchdog()


SCENARIOS = {name[len("scenario_"):]: f for name, f in list(globals().items()) if name.startswith("scenario_")}

if __name__ == "__main__":
    if sys.argv[1:] == ["--list"]:
        print("\n".join(sorted(SCENARIOS)))
        sys.exit(0)
    if len(sys.argv) != 2 or sys.argv[1] not in SCENARIOS:
        sys.exit("usage: host_sim.py {%s}" % "|".join(sorted(SCENARIOS)))
    try:
        SCENARIOS[sys.argv[1]]()
    except Fail as e:
        sys.exit("%s: %s" % (sys.argv[1], e))
    print("ok")
