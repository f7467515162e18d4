# moongate device for MicroPython (Raspberry Pi Pico W, ESP32) with
# umqtt.simple, following the device contract of firmware-examples/README.md:
#
#   devices/DEVICE/telemetry   {"seq":N,"boot":B,"ts":MS,"temp":C,"hum":RH}  QoS 1
#   devices/DEVICE/events/boot {"boot":B,"reset_cause":N}                   QoS 1
#   devices/DEVICE/status      "online" (retained) / last will "offline"
#   devices/DEVICE/cmd         {"cmd":"led","on":true}  <- from the function
#
# Readings wait in a small queue while Wi-Fi or the gateway is away and are
# sent, oldest first, once the connection is back (backoff with jitter).
import json
import random
import time

import machine
import network
from umqtt.simple import MQTTClient, MQTTException

import config

QUEUE_MAX = 64
# What a broken or refused connection raises in umqtt.simple: socket errors,
# MQTTException (CONNACK or SUBACK refusal), AssertionError (unexpected
# reply).
CONN_ERRORS = (OSError, MQTTException, AssertionError)
BACKOFF_MIN_MS = 500
BACKOFF_MAX_MS = 60000

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


def backoff_ms(failures):
    cap = BACKOFF_MIN_MS
    for _ in range(failures):
        if cap >= BACKOFF_MAX_MS:
            break
        cap *= 2
    cap = min(cap, BACKOFF_MAX_MS)
    return random.getrandbits(20) % (cap + 1)  # full jitter


def wifi_connect():
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    failures = 0
    while not wlan.isconnected():
        print("wifi: connecting to", config.WIFI_SSID)
        wlan.connect(config.WIFI_SSID, config.WIFI_PASSWORD)
        deadline = time.ticks_add(time.ticks_ms(), 15000)
        while not wlan.isconnected() and time.ticks_diff(deadline, time.ticks_ms()) > 0:
            time.sleep_ms(200)
        if not wlan.isconnected():
            failures += 1
            wlan.disconnect()
            wait = backoff_ms(failures)
            print("wifi: failed, retrying in %d ms" % wait)
            time.sleep_ms(wait)
    print("wifi: connected", wlan.ifconfig()[0])
    return wlan


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
    if clock_set:
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
                   password=config.MQTT_PASSWORD, keepalive=60)
    c.set_last_will(T_STATUS, b"offline", retain=True, qos=1)
    c.set_callback(on_message)
    try:
        c.connect(clean_session=False)  # persistent: commands wait for us
        c.subscribe(T_CMD, qos=1)
        c.publish(T_STATUS, b"online", retain=True, qos=1)
    except CONN_ERRORS:
        if c.sock:
            c.sock.close()
        raise
    print("mqtt: connected to %s:%d as %s" % (config.BROKER_HOST, config.BROKER_PORT, DEVICE))
    return c


def main():
    wlan = wifi_connect()
    set_clock()
    client = None
    failures = 0
    retry_at = time.ticks_ms()
    booted = False
    seq = 0
    next_reading = time.ticks_ms()
    last_io = time.ticks_ms()
    while True:
        now = time.ticks_ms()
        if time.ticks_diff(now, next_reading) >= 0:
            seq += 1
            take_reading(seq)
            next_reading = time.ticks_add(next_reading, config.INTERVAL_S * 1000)
        if client is None and time.ticks_diff(now, retry_at) >= 0:
            try:
                if not wlan.isconnected():
                    wlan = wifi_connect()
                client = mqtt_connect()
                failures = 0
                last_io = time.ticks_ms()
            except CONN_ERRORS as e:
                failures += 1
                wait = backoff_ms(failures)
                print("mqtt: connect failed (%r), retrying in %d ms" % (e, wait))
                retry_at = time.ticks_add(time.ticks_ms(), wait)
                client = None
        if client is not None:
            try:
                if not booted:
                    info = {"boot": BOOT, "reset_cause": machine.reset_cause()}
                    client.publish(T_BOOT, json.dumps(info).encode(), qos=1)
                    booted = True
                while queue:
                    # QoS 1: publish returns once the gateway's PUBACK came,
                    # i.e. once the reading is durable in moongate.
                    client.publish(T_TELEMETRY, json.dumps(queue[0]).encode(), qos=1)
                    print("published", queue[0])
                    queue.pop(0)
                    last_io = time.ticks_ms()
                client.check_msg()  # commands
                if time.ticks_diff(time.ticks_ms(), last_io) > 30000:
                    client.ping()
                    last_io = time.ticks_ms()
            except CONN_ERRORS as e:
                print("mqtt: connection lost (%r)" % (e,))
                try:
                    client.sock.close()
                except Exception:
                    pass
                client = None
                failures += 1
                retry_at = time.ticks_add(time.ticks_ms(), backoff_ms(failures))
        time.sleep_ms(50)


main()
