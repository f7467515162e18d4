# moongate device for MicroPython (Raspberry Pi Pico W, ESP32) with
# umqtt.simple, following the device contract of firmware-examples/README.md:
#
#   devices/DEVICE/telemetry   {"seq":N,"boot":B,"ts":MS,"temp":C,"hum":RH}  QoS 1
#   devices/DEVICE/events/boot {"boot":B,"reset_cause":N}                   QoS 1
#   devices/DEVICE/status      "online" (retained) / last will "offline"
#   devices/DEVICE/cmd         {"cmd":"led","on":true}  <- from the function
#
# Readings are taken on schedule whether connected or not and wait in a small
# queue while Wi-Fi or the gateway is away; they are sent, oldest first, once
# the connection is back (backoff with jitter, also after a dropped
# connection). Neither reconnect blocks the loop for long: the MQTT socket
# has a timeout and a watchdog resets the board if the loop stops anyway.
import json
import random
import time

import machine
import network
from umqtt.simple import MQTTClient, MQTTException

try:
    import config
except ImportError:
    print("config.py is missing: copy config.example.py to config.py, edit it, and copy it to the board")
    raise

QUEUE_MAX = 64
# What a broken or refused connection raises in umqtt.simple: socket errors
# (a socket timeout is OSError ETIMEDOUT), MQTTException (CONNACK or SUBACK
# refusal), AssertionError (unexpected reply), IndexError (an empty read
# from a connection the broker closed: resp[0] of b"", which moongate does
# when it sheds a reconnecting fleet).
CONN_ERRORS = (OSError, MQTTException, AssertionError, IndexError)
BACKOFF_MIN_MS = 500
BACKOFF_MAX_MS = 60000
STABLE_MS = 60000  # a connection that lasted this long resets the backoff
WIFI_ATTEMPT_MS = 15000  # how long one Wi-Fi attempt may take

DEVICE = config.DEVICE
T_TELEMETRY = ("devices/%s/telemetry" % DEVICE).encode()
T_BOOT = ("devices/%s/events/boot" % DEVICE).encode()
T_STATUS = ("devices/%s/status" % DEVICE).encode()
T_CMD = ("devices/%s/cmd" % DEVICE).encode()

# A random id of this boot: with seq it lets the function tell a resent
# reading (same boot, same seq) from a reboot (new boot, seq from 1).
BOOT = random.getrandbits(30)

led = machine.Pin(config.LED_PIN, machine.Pin.OUT)
queue = []
dropped = 0
clock_set = False

wdt = None  # the watchdog, started by main()


def feed():
    if wdt:
        wdt.feed()


def sleep_ms(ms):
    # Sleep in slices, feeding the watchdog.
    while ms > 0:
        feed()
        time.sleep_ms(min(ms, 1000))
        ms -= 1000


def backoff_ms(failures):
    # Full jitter: a random wait in [0, min(max, min * 2^failures)].
    cap = BACKOFF_MIN_MS
    for _ in range(failures):
        if cap >= BACKOFF_MAX_MS:
            break
        cap *= 2
    cap = min(cap, BACKOFF_MAX_MS)
    return random.getrandbits(20) % (cap + 1)


class TLS:
    """An ssl.SSLContext as umqtt.simple's ssl argument that also keeps the
    TCP socket under the TLS one: MicroPython's TLS sockets have no
    settimeout() (their setblocking() goes to the TCP socket)."""

    def __init__(self, context):
        self.context = context
        self.sock = None

    def wrap_socket(self, sock, server_hostname=None):
        self.sock = sock
        # server_hostname (umqtt passes BROKER_HOST) is checked against the
        # gateway's certificate.
        return self.context.wrap_socket(sock, server_hostname=server_hostname)


tls = None
tls_params = None
if config.TLS_CA:
    import ssl

    with open(config.TLS_CA, "rb") as f:
        ca = f.read()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # ssl.SSLContext (and ssl.wrap_socket, behind umqtt's ssl=True) verify
    # nothing unless told to: require a certificate signed by TLS_CA.
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca)
    tls = TLS(ctx)
    # Older umqtt.simple releases ignore a context and pass ssl_params to
    # ssl.wrap_socket instead: with these, that path verifies too.
    tls_params = {"cert_reqs": ssl.CERT_REQUIRED, "cadata": ca, "server_hostname": config.BROKER_HOST}


def arm_timeout(client):
    # umqtt.simple's wait_msg() (behind publish, subscribe and check_msg)
    # puts the socket back into blocking mode without a timeout after its
    # first read: set the timeout again before each call that waits for the
    # broker, so a silent link raises OSError instead of blocking for good.
    # The rest of a packet is still read without one: the watchdog covers it.
    # Each wait is bounded by SOCKET_TIMEOUT_S and feeds the watchdog first:
    # a connect waits for several replies in a row, and a slow gateway
    # (2 s a reply) made the watchdog reset the board at every connect.
    feed()
    sock = tls.sock if tls else client.sock
    if sock:  # None: TLS through an older umqtt.simple, the watchdog only
        sock.settimeout(config.SOCKET_TIMEOUT_S)


def set_clock():
    global clock_set
    if not config.NTP or clock_set:
        return
    try:
        import ntptime

        ntptime.settime()
        clock_set = True
    except Exception as e:  # no NTP: readings go without "ts"
        print("ntp:", e)


def now_ms():
    # Milliseconds since 1970; some ports count from 2000.
    offset = 946684800 if time.gmtime(0)[0] == 2000 else 0
    return (time.time() + offset) * 1000


sensor = None
if config.SENSOR == "pico":
    sensor = machine.ADC(4)
elif config.SENSOR == "dht22":
    import dht

    sensor = dht.DHT22(machine.Pin(config.DHT_PIN))


def read(seq):
    """Returns (temp in Celsius, relative humidity in percent or None)."""
    if config.SENSOR == "pico":
        volts = sensor.read_u16() * 3.3 / 65535
        return 27 - (volts - 0.706) / 0.001721, None
    if config.SENSOR == "dht22":
        sensor.measure()
        return sensor.temperature(), sensor.humidity()
    wave = (0, 1.5, 2.6, 3, 2.6, 1.5, 0, -1.5, -2.6, -3, -2.6, -1.5)
    return 24 + wave[seq % 12] + random.getrandbits(7) / 100, 40 + seq % 20


def take_reading(seq):
    global dropped
    temp, hum = read(seq)
    r = {"seq": seq, "boot": BOOT, "temp": round(temp, 2)}
    if hum is not None:
        r["hum"] = round(hum, 2)
    if clock_set:  # else the gateway's receive time stands for it
        r["ts"] = now_ms()
    if len(queue) >= QUEUE_MAX:  # full: drop the oldest, the gap shows in seq
        queue.pop(0)
        dropped += 1
    queue.append(r)


def on_message(topic, msg):
    print("command:", msg)
    try:
        cmd = json.loads(msg)
    except ValueError:
        print("command ignored: not JSON")
        return
    if not isinstance(cmd, dict) or cmd.get("cmd") != "led" or not isinstance(cmd.get("on"), bool):
        print("command ignored: not an led command")
        return
    led.value(1 if cmd["on"] else 0)
    print("led:", "on" if cmd["on"] else "off")


def mqtt_connect():
    # umqtt.simple sends a username only with a password.
    user = DEVICE if config.MQTT_PASSWORD else None
    c = MQTTClient(DEVICE, config.BROKER_HOST, port=config.BROKER_PORT, user=user,
                   password=config.MQTT_PASSWORD, keepalive=60, ssl=tls)
    if tls:
        c.ssl_params = tls_params
        tls.sock = None
    c.set_last_will(T_STATUS, b"offline", retain=True, qos=1)
    c.set_callback(on_message)
    try:
        try:
            # persistent session: commands wait for us
            c.connect(clean_session=False, timeout=config.SOCKET_TIMEOUT_S)
        except TypeError:
            # umqtt.simple without connect(timeout=...): only the watchdog
            # bounds the connect. `mpremote mip install umqtt.simple` brings
            # a current one.
            c.connect(clean_session=False)
        arm_timeout(c)
        c.subscribe(T_CMD, qos=1)
        arm_timeout(c)
        c.publish(T_STATUS, b"online", retain=True, qos=1)
    except CONN_ERRORS:
        if c.sock:
            c.sock.close()
        raise
    print("mqtt: connected to %s:%d as %s" % (config.BROKER_HOST, config.BROKER_PORT, DEVICE))
    return c


def main():
    global wdt
    # The watchdog resets the board when the loop stops feeding it: the last
    # resort against a call that blocks for good (umqtt.simple reads the rest
    # of a packet without a timeout, see arm_timeout). Once started it cannot
    # be stopped, not even from the REPL; it starts here, after the settings
    # loaded, so a bad config.py stops at the REPL instead of a reset loop.
    # See config.example.py for its timeout.
    if config.WDT_TIMEOUT_MS:
        if config.SOCKET_TIMEOUT_S * 1000 >= config.WDT_TIMEOUT_MS:
            print("warning: SOCKET_TIMEOUT_S is not below WDT_TIMEOUT_MS: a slow broker resets the board")
        wdt = machine.WDT(timeout=config.WDT_TIMEOUT_MS)
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    period = config.INTERVAL_S * 1000
    client = None
    failures = 0  # in a row, Wi-Fi and MQTT: the backoff grows with it
    retry_at = time.ticks_ms()
    wifi_since = None  # when the Wi-Fi attempt under way started
    connected_at = 0
    booted = False
    seq = 0
    next_reading = time.ticks_ms()
    last_io = time.ticks_ms()
    while True:
        feed()
        now = time.ticks_ms()
        if time.ticks_diff(now, next_reading) >= 0:
            try:
                take_reading(seq + 1)
                seq += 1
            except Exception as e:  # a DHT22 read fails now and then (ETIMEDOUT, checksum)
                print("reading failed:", e)
            next_reading = time.ticks_add(next_reading, period)
            if time.ticks_diff(next_reading, now) <= 0:
                # Late (a slow connect, a stall): skip the missed slots
                # instead of taking a burst of catch-up readings.
                next_reading = time.ticks_add(now, period)
        if client is None and time.ticks_diff(now, retry_at) >= 0:
            if not wlan.isconnected():
                # Wi-Fi first, without blocking the loop.
                if wifi_since is None:
                    print("wifi: connecting to", config.WIFI_SSID)
                    wifi_since = now
                    try:
                        wlan.connect(config.WIFI_SSID, config.WIFI_PASSWORD)
                    except OSError as e:
                        print("wifi:", e)
                        wifi_since = time.ticks_add(now, -WIFI_ATTEMPT_MS)  # failed: back off now
                if wifi_since is not None and time.ticks_diff(now, wifi_since) >= WIFI_ATTEMPT_MS:
                    try:
                        wlan.disconnect()
                    except OSError:
                        pass
                    wifi_since = None
                    wait = backoff_ms(failures)
                    failures += 1
                    print("wifi: failed, retrying in %d ms" % wait)
                    retry_at = time.ticks_add(now, wait)
            else:
                if wifi_since is not None:
                    print("wifi: connected", wlan.ifconfig()[0])
                    wifi_since = None
                try:
                    set_clock()  # before TLS: certificates have validity dates
                    client = mqtt_connect()
                    # failures stays: it resets once the connection lasted
                    connected_at = last_io = time.ticks_ms()
                except CONN_ERRORS as e:
                    wait = backoff_ms(failures)
                    failures += 1
                    print("mqtt: connect failed (%r), retrying in %d ms" % (e, wait))
                    retry_at = time.ticks_add(time.ticks_ms(), wait)
                    client = None
        if client is not None:
            if failures and time.ticks_diff(now, connected_at) >= STABLE_MS:
                failures = 0  # it lasted: the next drop backs off from the bottom
            try:
                if not booted:
                    info = {"boot": BOOT, "reset_cause": machine.reset_cause()}
                    arm_timeout(client)
                    client.publish(T_BOOT, json.dumps(info).encode(), qos=1)
                    booted = True
                while queue:
                    # QoS 1: publish returns once the gateway's PUBACK came,
                    # i.e. once the reading is durable in moongate.
                    arm_timeout(client)
                    client.publish(T_TELEMETRY, json.dumps(queue[0]).encode(), qos=1)
                    print("published", queue[0])
                    queue.pop(0)
                    last_io = time.ticks_ms()
                    feed()
                client.check_msg()  # commands
                if time.ticks_diff(time.ticks_ms(), last_io) > 30000:
                    arm_timeout(client)
                    client.ping()
                    last_io = time.ticks_ms()
            except CONN_ERRORS as e:
                # A drop counts as a failure, like a refused connect: a
                # broker that accepts and drops, or two boards with one
                # device name kicking each other off, must not make the
                # board reconnect in a tight loop. The count only resets
                # once a connection has lasted STABLE_MS (above; the same
                # rule as linux-c/moongate_device.c).
                try:
                    client.sock.close()
                except Exception:
                    pass
                client = None
                now = time.ticks_ms()
                wait = backoff_ms(failures)
                failures += 1
                print("mqtt: connection lost (%r), retrying in %d ms" % (e, wait))
                retry_at = time.ticks_add(now, wait)
        sleep_ms(50)


main()
