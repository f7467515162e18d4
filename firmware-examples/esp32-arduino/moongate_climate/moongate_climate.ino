// moongate device for an ESP32 with the Arduino core, PubSubClient and
// ArduinoJson (v7), following the device contract of
// firmware-examples/README.md:
//
//   devices/DEVICE/telemetry  {"seq":N,"boot":B,"temp":C,"hum":RH}   QoS 0 (PubSubClient)
//   devices/DEVICE/status     "online" (retained) / last will "offline"
//   devices/DEVICE/cmd        {"cmd":"led","on":true}  <- from the function, QoS 1
//
// PubSubClient publishes at QoS 0 only: the gateway does not acknowledge
// readings, so one sent just before a connection drop can be lost. The
// readings carry a sequence number; the paired function counts the gaps.
// Readings are taken on schedule and wait in a ring buffer while Wi-Fi or
// the gateway is away; neither reconnect blocks the loop.
#include <WiFi.h>
#include <PubSubClient.h>
#include <ArduinoJson.h>

// Settings with the Wi-Fi and device passwords: copy config.example.h to
// config.h and edit it (config.h is git-ignored, keep it out of version
// control).
#if __has_include("config.h")
#include "config.h"
#else
#error "config.h is missing: copy config.example.h to config.h in this sketch folder and edit it"
#endif

#ifdef USE_DHT22
#include <DHT.h>
DHT dht(DHT_PIN, DHT22);
#endif

static const uint32_t BACKOFF_MIN_MS = 500, BACKOFF_MAX_MS = 60000;
static const uint32_t STABLE_MS = 60000;        // a connection this old resets the backoff
static const uint32_t WIFI_ATTEMPT_MS = 15000;  // how long one Wi-Fi attempt may take
static const int QUEUE_CAP = 32;

struct Reading {
  uint32_t seq;
  float temp, hum;
};

static Reading queue[QUEUE_CAP];
static int qHead = 0, qLen = 0;
static uint32_t dropped = 0, seq = 0, bootId = 0;

static WiFiClient net;
static PubSubClient mqtt(net);

static char tTelemetry[96], tStatus[96], tCmd[96];

// Full jitter: a random wait in [0, min(max, min * 2^failures)].
static uint32_t backoffMs(uint32_t failures) {
  uint32_t cap = BACKOFF_MIN_MS;
  for (uint32_t i = 0; i < failures && cap < BACKOFF_MAX_MS; i++) cap *= 2;
  if (cap > BACKOFF_MAX_MS) cap = BACKOFF_MAX_MS;
  return esp_random() % (cap + 1);
}

// The wait after an MQTT connection that was up for upMs ended (lost, or a
// publish failed). A drop counts as a failure, like a refused connect: a
// broker that accepts and drops, or two boards with one device name kicking
// each other off (a session takeover), must not make the board reconnect
// in a tight loop. The count only resets once a connection has lasted
// STABLE_MS. (The same rule as linux-c/moongate_device.c.)
static uint32_t backoffAfterDrop(uint32_t upMs, uint32_t &failures) {
  if (upMs >= STABLE_MS) failures = 0;
  return backoffMs(failures++);
}

// wifiReady keeps Wi-Fi up without blocking the loop, so readings are taken
// on schedule while it is away: an attempt may take WIFI_ATTEMPT_MS, and
// the next one waits the backoff. True while Wi-Fi is connected.
static bool wifiReady(uint32_t now) {
  static bool up = false, trying = false;
  static uint32_t since = 0, retryAt = 0, failures = 0;
  if (WiFi.status() == WL_CONNECTED) {
    if (!up) Serial.printf("wifi: connected, %s\n", WiFi.localIP().toString().c_str());
    up = true;
    trying = false;
    failures = 0;
    return true;
  }
  if (up) {
    Serial.println("wifi: lost");
    up = false;
  }
  if (trying) {
    if (now - since < WIFI_ATTEMPT_MS) return false;
    trying = false;
    WiFi.disconnect();
    uint32_t wait = backoffMs(failures++);
    Serial.printf("wifi: failed, retrying in %u ms\n", (unsigned)wait);
    retryAt = now + wait;
  }
  if ((int32_t)(now - retryAt) < 0) return false;
  Serial.printf("wifi: connecting to %s\n", WIFI_SSID);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  trying = true;
  since = now;
  return false;
}

static void takeReading() {
  Reading r;
  r.seq = ++seq;
#ifdef USE_DHT22
  r.temp = dht.readTemperature();
  r.hum = dht.readHumidity();
  if (isnan(r.temp)) {
    Serial.println("dht22: read failed");
    seq--;
    return;
  }
#else
  static const float wave[] = {0, 1.5, 2.6, 3, 2.6, 1.5, 0, -1.5, -2.6, -3, -2.6, -1.5};
  r.temp = 24 + wave[r.seq % 12] + (esp_random() % 100) / 100.0f;
  r.hum = 40 + r.seq % 20;
#endif
  if (qLen == QUEUE_CAP) {  // full: drop the oldest, the gap shows in seq
    qHead = (qHead + 1) % QUEUE_CAP;
    qLen--;
    dropped++;
  }
  queue[(qHead + qLen) % QUEUE_CAP] = r;
  qLen++;
}

static void onMessage(char *topic, byte *payload, unsigned int length) {
  Serial.printf("command: %.*s\n", (int)length, (const char *)payload);
  JsonDocument doc;
  DeserializationError err = deserializeJson(doc, payload, length);
  if (err) {
    Serial.printf("command ignored: %s\n", err.c_str());
    return;
  }
  if (strcmp(doc["cmd"] | "", "led") != 0 || !doc["on"].is<bool>()) {
    Serial.println("command ignored: not an led command");
    return;
  }
  bool on = doc["on"].as<bool>();
  digitalWrite(LED_PIN, on ? HIGH : LOW);
  Serial.printf("led: %s\n", on ? "on" : "off");
}

static bool mqttConnect() {
  // Persistent session (cleanSession false): commands sent while the device
  // is away wait in the broker. The will marks it offline when it vanishes.
  if (!mqtt.connect(DEVICE_NAME, DEVICE_NAME, MQTT_PASSWORD, tStatus, 1, true, "offline", false)) {
    Serial.printf("mqtt: connect failed, state %d\n", mqtt.state());
    return false;
  }
  if (!mqtt.subscribe(tCmd, 1) || !mqtt.publish(tStatus, "online", true)) {
    Serial.println("mqtt: subscribe or status failed");
    net.stop();  // no DISCONNECT: the will ("offline") stands
    return false;
  }
  Serial.printf("mqtt: connected to %s:%d as %s\n", BROKER_HOST, BROKER_PORT, DEVICE_NAME);
  return true;
}

static bool sendQueue() {
  while (qLen > 0) {
    Reading &r = queue[qHead];
    JsonDocument doc;
    doc["seq"] = r.seq;
    doc["boot"] = bootId;
    doc["temp"] = serialized(String(r.temp, 2));
    doc["hum"] = serialized(String(r.hum, 2));
    char buf[128];
    size_t n = serializeJson(doc, buf, sizeof buf);
    if (!mqtt.publish(tTelemetry, (const uint8_t *)buf, n, false)) return false;
    Serial.printf("published %s\n", buf);
    qHead = (qHead + 1) % QUEUE_CAP;
    qLen--;
  }
  return true;
}

void setup() {
  Serial.begin(115200);
  pinMode(LED_PIN, OUTPUT);
  digitalWrite(LED_PIN, LOW);
#ifdef USE_DHT22
  dht.begin();
#endif
  bootId = esp_random() & 0x3fffffff;
  snprintf(tTelemetry, sizeof tTelemetry, "devices/%s/telemetry", DEVICE_NAME);
  snprintf(tStatus, sizeof tStatus, "devices/%s/status", DEVICE_NAME);
  snprintf(tCmd, sizeof tCmd, "devices/%s/cmd", DEVICE_NAME);
  WiFi.mode(WIFI_STA);  // joined from loop(), see wifiReady
  mqtt.setServer(BROKER_HOST, BROKER_PORT);
  mqtt.setCallback(onMessage);
  mqtt.setKeepAlive(30);
}

void loop() {
  static uint32_t nextReading = 0, retryAt = 0, failures = 0, connectedAt = 0;
  static bool connected = false;
  uint32_t now = millis();
  if ((int32_t)(now - nextReading) >= 0) {
    takeReading();
    nextReading = now + INTERVAL_MS;  // after a stall: the next slot, no burst
  }
  if (connected && !mqtt.connected()) {
    // Dropped: the broker closed it, a keep-alive was missed, or another
    // board with this name took the session over.
    connected = false;
    uint32_t wait = backoffAfterDrop(now - connectedAt, failures);
    Serial.printf("mqtt: connection lost, state %d, retrying in %u ms\n", mqtt.state(), (unsigned)wait);
    retryAt = now + wait;
  }
  if (!connected && wifiReady(now) && (int32_t)(now - retryAt) >= 0) {
    if (mqttConnect()) {
      connected = true;  // failures stays: see backoffAfterDrop
      connectedAt = millis();
    } else {
      uint32_t wait = backoffMs(failures++);
      Serial.printf("mqtt: retrying in %u ms\n", (unsigned)wait);
      retryAt = millis() + wait;
    }
  }
  if (connected) {
    if (sendQueue()) {
      mqtt.loop();  // keep-alive and commands
    } else {
      net.stop();  // no DISCONNECT: the will ("offline") stands
      connected = false;
      uint32_t t = millis(), wait = backoffAfterDrop(t - connectedAt, failures);
      Serial.printf("mqtt: publish failed, reconnecting in %u ms\n", (unsigned)wait);
      retryAt = t + wait;
    }
  }
  delay(20);
}
