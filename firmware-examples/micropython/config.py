# Settings of the moongate MicroPython device. Copy this file to the board
# next to main.py and edit it; keep real passwords out of version control.

WIFI_SSID = "your-network"
WIFI_PASSWORD = "your-wifi-password"

# The gateway: moongate's embedded broker (or the Mosquitto it uses).
BROKER_HOST = "192.168.1.10"
BROKER_PORT = 1883

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

# Set the clock with NTP after Wi-Fi comes up, so readings carry "ts".
NTP = True
