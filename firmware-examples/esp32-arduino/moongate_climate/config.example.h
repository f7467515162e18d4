// Settings of the moongate ESP32 device: a template. Copy it to config.h in
// this folder (cp config.example.h config.h) and edit that before flashing.
// config.h holds the Wi-Fi and device passwords: it is git-ignored (see
// .gitignore here), keep it out of version control.
#pragma once

#define WIFI_SSID "your-network"
#define WIFI_PASSWORD "your-wifi-password"

// The gateway: moongate's embedded broker (or the Mosquitto it uses).
#define BROKER_HOST "192.168.1.10"
#define BROKER_PORT 1883

// The device name is the MQTT client id, the username and the {device}
// level of every topic: letters, digits, '-', '_' and '.', at most 64.
#define DEVICE_NAME "esp32-1"
// The password of the device's account in moongate's config
// (mqtt.embedded.users, hashed with `moongate hash-password`).
#define MQTT_PASSWORD "device-password"

#define INTERVAL_MS 10000UL

// The LED (or relay driver) the gateway's commands switch; 2 is the
// on-board LED of most ESP32 DevKit boards.
#define LED_PIN 2

// Uncomment to read a DHT22 on DHT_PIN (Adafruit "DHT sensor library");
// without it the readings are simulated.
// #define USE_DHT22
#define DHT_PIN 4
