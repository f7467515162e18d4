# Settings of the moongate MicroPython device: a template. Copy it to
# config.py (cp config.example.py config.py), edit that, and copy config.py
# to the board next to main.py. config.py holds the Wi-Fi and device
# passwords: it is git-ignored (see .gitignore here), keep it out of
# version control.

WIFI_SSID = "your-network"
WIFI_PASSWORD = "your-wifi-password"

# The gateway: moongate's embedded broker (or the Mosquitto it uses).
BROKER_HOST = "192.168.1.10"
BROKER_PORT = 1883

# TLS (the gateway with mqtt.embedded.tls, usually on port 8883): the file on
# the board (PEM or DER) with the CA certificate that signed the gateway's
# certificate, e.g. "ca.pem". The gateway's certificate is then verified:
# signed by this CA, valid now (the clock must be set: NTP below), and
# issued for BROKER_HOST, so use a host name the certificate names (see
# README.md). None: plain MQTT, passwords in clear text on the network.
TLS_CA = None

# The device name is the MQTT client id, the username and the {device}
# level of every topic: letters, digits, '-', '_' and '.', at most 64.
DEVICE = "pico-1"
# The password of the device's account in moongate's config
# (mqtt.embedded.users; hash it with `moongate hash-password`). None for a
# gateway that allows anonymous devices (loopback only).
MQTT_PASSWORD = "device-password"

# Seconds between readings.
INTERVAL_S = 10

# Sensor: "sim" (simulated, the default), "pico" (the RP2040's internal
# temperature sensor, no humidity) or "dht22" (data pin DHT_PIN).
SENSOR = "sim"
DHT_PIN = 15

# The LED the gateway's commands switch: "LED" is the Pico W's on-board LED;
# on an ESP32 DevKit use 2.
LED_PIN = "LED"

# Set the clock with NTP after Wi-Fi comes up, so readings carry "ts" (and
# TLS can check certificate dates). Without it the gateway's receive time
# stands for "ts".
NTP = True

# Seconds the MQTT socket may wait for the broker (connect, TLS handshake, a
# PUBACK, a write) before giving up with OSError: a silent link (Wi-Fi up,
# gateway gone without closing the connection) then counts as a lost
# connection instead of blocking the board for good.
SOCKET_TIMEOUT_S = 5

# Watchdog (machine.WDT) in milliseconds, fed by the main loop; 0 turns it
# off. If the loop stops for this long the board resets (the readings
# queued in RAM are lost, seq starts again under a new boot id). Choose it
# above the longest step the loop cannot feed it in, with room to spare: one
# MQTT connect (DNS lookup + TCP connect + TLS handshake + CONNACK, the
# socket steps each bounded by SOCKET_TIMEOUT_S) or one publish waiting for
# its PUBACK (SOCKET_TIMEOUT_S); too short and a slow but working network
# resets the board. The RP2040 (Pico W) allows at most 8388 ms, so keep
# SOCKET_TIMEOUT_S near half of it there; an ESP32 allows more (e.g. 30000
# with SOCKET_TIMEOUT_S = 10). Once started it cannot be stopped: to work on
# the board, copy files right after mpremote connects (it interrupts
# main.py, and the board resets WDT_TIMEOUT_MS later), or set 0 while
# developing.
WDT_TIMEOUT_MS = 8000
