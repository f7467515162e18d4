/*
 * moongate-device: a Linux-class device (a Raspberry Pi, a router, any
 * Linux box) that follows moongate's device contract
 * (firmware-examples/README.md) with the Eclipse Paho MQTT C client.
 *
 * It publishes a temperature/humidity reading as JSON on
 * devices/DEVICE/telemetry at QoS 1, keeps readings in a ring buffer while
 * the gateway is away and sends them after reconnecting (backoff with full
 * jitter), announces itself on devices/DEVICE/status (retained "online",
 * last will "offline"), and switches a relay on {"cmd":"relay","on":...}
 * received on devices/DEVICE/cmd. The relay is printed (and, with --gpio,
 * written to a sysfs-style value file). A reading carries "ts" only when
 * the system clock has been set (see CLOCK_SET_AFTER_S); otherwise the
 * gateway's receive time stands for it.
 *
 * Build: make (needs libpaho-mqtt-dev). Run: ./moongate-device --help.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <MQTTClient.h>

#define QUEUE_CAP 256      /* readings kept while the gateway is away */
#define PAYLOAD_MAX 160
#define TOPIC_MAX 192
#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 30000
#define STABLE_MS 60000    /* a connection that lasted this long resets the backoff */
/* A clock before 2020-01-01T00:00:00Z has not been set yet (a board
 * without a battery-backed RTC starts at 1970 until NTP sets it): readings
 * taken then go without "ts" and the gateway's receive time stands for it. */
#define CLOCK_SET_AFTER_S 1577836800LL

/* Exit codes. */
enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_TIMEOUT = 3 };

struct options {
	const char *broker, *device, *username, *password;
	const char *sensor; /* file with millidegrees (Linux thermal zone), or NULL */
	const char *gpio;   /* file to write 0/1 to on relay commands, or NULL */
	long interval_ms, count, until_cmd, timeout_s;
	double temp;        /* fixed temperature when set (has_temp) */
	int has_temp;
};

struct reading {
	unsigned long seq;
	long long ts_ms; /* 0: the clock was not set when the reading was taken */
	double temp, hum;
};

/* The ring buffer of readings not yet acknowledged by the gateway. */
static struct reading queue[QUEUE_CAP];
static int q_head, q_len;
static unsigned long dropped;
static unsigned long boot_id; /* random per start: tells a resend from a restart */

static atomic_int connection_lost;
static atomic_int commands;
static atomic_int relay_on;
static volatile sig_atomic_t stop_requested;
static struct options opt;

static long long now_ms(int clock) {
	struct timespec ts;
	clock_gettime(clock, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms) {
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR && !stop_requested) {
	}
}

static void on_signal(int sig) {
	(void)sig;
	stop_requested = 1;
}

/* read_temp takes a reading: the sensor file (millidegrees Celsius, as in
 * /sys/class/thermal/thermal_zone0/temp), the fixed --temp, or a simulated
 * daily-ish wave. */
static double read_temp(unsigned long seq) {
	if (opt.has_temp)
		return opt.temp;
	if (opt.sensor) {
		FILE *f = fopen(opt.sensor, "r");
		long milli;
		if (f) {
			int ok = fscanf(f, "%ld", &milli) == 1;
			fclose(f);
			if (ok)
				return milli / 1000.0;
		}
		fprintf(stderr, "sensor %s unreadable, using the simulation\n", opt.sensor);
	}
	static const double wave[] = {0, 1.5, 2.6, 3, 2.6, 1.5, 0, -1.5, -2.6, -3, -2.6, -1.5};
	return 24.0 + wave[seq % 12] + (rand() % 100) / 100.0;
}

static void set_relay(int on) {
	atomic_store(&relay_on, on);
	printf("relay: %s\n", on ? "on" : "off");
	if (opt.gpio) {
		FILE *f = fopen(opt.gpio, "w");
		if (!f || fputs(on ? "1\n" : "0\n", f) == EOF)
			fprintf(stderr, "gpio %s: %s\n", opt.gpio, strerror(errno));
		if (f)
			fclose(f);
	}
}

/* skip_json_colon skips JSON white space, one ':' and white space again
 * after a key; NULL when there is no ':' there. */
static char *skip_json_colon(char *p) {
	while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
		p++;
	if (*p != ':')
		return NULL;
	p++;
	while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
		p++;
	return p;
}

/* handle_command acts on {"cmd":"relay","on":true|false}. The parser is
 * deliberately small: it looks for the two fields and ignores the rest;
 * anything else is reported and ignored. */
static void handle_command(const char *p, int len) {
	char buf[256];
	if (len < 0 || len >= (int)sizeof buf) {
		printf("command ignored: %d bytes is too long\n", len);
		return;
	}
	memcpy(buf, p, len);
	buf[len] = 0;
	printf("command: %s\n", buf);
	/* The value of "cmd" must be "relay" (not "relay" anywhere after
	 * it: {"cmd":"reboot","target":"relay"} is no relay command). */
	char *cmd = strstr(buf, "\"cmd\"");
	char *on = strstr(buf, "\"on\"");
	if (cmd) {
		cmd = skip_json_colon(cmd + 5);
	}
	if (!cmd || strncmp(cmd, "\"relay\"", 7) != 0 || !on) {
		printf("command ignored: not a relay command\n");
		return;
	}
	on = skip_json_colon(on + 4);
	if (!on) {
		printf("command ignored: \"on\" must be true or false\n");
		return;
	}
	if (strncmp(on, "true", 4) == 0)
		set_relay(1);
	else if (strncmp(on, "false", 5) == 0)
		set_relay(0);
	else
		printf("command ignored: \"on\" must be true or false\n");
}

/* Paho callbacks run on the library's receive thread. */
static int on_message(void *ctx, char *topic, int topic_len, MQTTClient_message *m) {
	(void)ctx;
	(void)topic_len;
	handle_command(m->payload, m->payloadlen);
	fflush(stdout);
	atomic_fetch_add(&commands, 1);
	MQTTClient_freeMessage(&m);
	MQTTClient_free(topic);
	return 1; /* handled: paho sends the PUBACK */
}

static void on_connection_lost(void *ctx, char *cause) {
	(void)ctx;
	fprintf(stderr, "connection lost: %s\n", cause ? cause : "(no cause)");
	atomic_store(&connection_lost, 1);
}

/* backoff returns a random wait in [0, min(max, min*2^failures)]. */
static long backoff_ms(int failures) {
	long cap = BACKOFF_MIN_MS;
	for (int i = 0; i < failures && cap < BACKOFF_MAX_MS; i++)
		cap *= 2;
	if (cap > BACKOFF_MAX_MS)
		cap = BACKOFF_MAX_MS;
	return rand() % (cap + 1);
}

/* backoff_after_drop is the wait after a connection that was up for up_ms
 * ended (lost, or a publish failed). A drop counts as a failure, like a
 * refused connect: a broker that accepts and drops, or two boards with one
 * device name kicking each other off, must not make the device reconnect
 * in a tight loop. The count only resets once a connection has lasted
 * STABLE_MS. */
static long backoff_after_drop(long long up_ms, int *failures) {
	if (up_ms >= STABLE_MS)
		*failures = 0;
	return backoff_ms((*failures)++);
}

static char t_telemetry[TOPIC_MAX], t_cmd[TOPIC_MAX], t_status[TOPIC_MAX];

static int mqtt_connect(MQTTClient c) {
	MQTTClient_connectOptions co = MQTTClient_connectOptions_initializer;
	MQTTClient_willOptions will = MQTTClient_willOptions_initializer;
	will.topicName = t_status;
	will.message = "offline";
	will.retained = 1;
	will.qos = 1;
	co.keepAliveInterval = 30;
	co.cleansession = 0; /* persistent session: commands wait for us */
	co.connectTimeout = 10;
	co.will = &will;
	co.username = opt.username;
	co.password = opt.password;
	int rc = MQTTClient_connect(c, &co);
	if (rc != MQTTCLIENT_SUCCESS) {
		fprintf(stderr, "connect %s: %s (%d)\n", opt.broker, MQTTClient_strerror(rc), rc);
		return rc;
	}
	rc = MQTTClient_subscribe(c, t_cmd, 1);
	if (rc != MQTTCLIENT_SUCCESS) {
		/* A refused subscription (outside the ACL) comes back as a failure. */
		fprintf(stderr, "subscribe %s: %s (%d)\n", t_cmd, MQTTClient_strerror(rc), rc);
		MQTTClient_disconnect(c, 1000);
		return rc;
	}
	MQTTClient_deliveryToken dt;
	rc = MQTTClient_publish(c, t_status, 6, "online", 1, 1, &dt);
	if (rc == MQTTCLIENT_SUCCESS)
		rc = MQTTClient_waitForCompletion(c, dt, 10000);
	if (rc != MQTTCLIENT_SUCCESS) {
		fprintf(stderr, "publish status: %s (%d)\n", MQTTClient_strerror(rc), rc);
		MQTTClient_disconnect(c, 1000);
		return rc;
	}
	atomic_store(&connection_lost, 0);
	printf("connected to %s as %s\n", opt.broker, opt.device);
	fflush(stdout);
	return MQTTCLIENT_SUCCESS;
}

/* send_queue publishes the buffered readings, oldest first, each at QoS 1
 * and waiting for its PUBACK (moongate sends it once the reading is
 * durable). It stops at the first failure and keeps the rest. */
static int send_queue(MQTTClient c) {
	while (q_len > 0) {
		struct reading *r = &queue[q_head];
		char payload[PAYLOAD_MAX], ts[32] = "";
		if (r->ts_ms > 0)
			snprintf(ts, sizeof ts, "\"ts\":%lld,", r->ts_ms);
		int n = snprintf(payload, sizeof payload, "{\"seq\":%lu,\"boot\":%lu,%s\"temp\":%.2f,\"hum\":%.2f}",
		                 r->seq, boot_id, ts, r->temp, r->hum);
		MQTTClient_deliveryToken dt;
		int rc = MQTTClient_publish(c, t_telemetry, n, payload, 1, 0, &dt);
		if (rc == MQTTCLIENT_SUCCESS)
			rc = MQTTClient_waitForCompletion(c, dt, 10000);
		if (rc != MQTTCLIENT_SUCCESS) {
			fprintf(stderr, "publish seq=%lu: %s (%d); kept for later\n", r->seq, MQTTClient_strerror(rc), rc);
			return rc;
		}
		printf("published seq=%lu temp=%.2f hum=%.2f (acked)\n", r->seq, r->temp, r->hum);
		fflush(stdout);
		q_head = (q_head + 1) % QUEUE_CAP;
		q_len--;
	}
	return MQTTCLIENT_SUCCESS;
}

/* reading_ts is the time of a reading taken now, or 0 while the clock is
 * not set. It says so on stderr when that changes. The check is per
 * reading: once NTP sets the clock, the next reading has its "ts"; those
 * taken before keep none (their time is unknown, not 1970). */
static long long reading_ts(void) {
	static int last = -1; /* -1 unknown, 0 unset, 1 set */
	long long ms = now_ms(CLOCK_REALTIME);
	int set = ms >= CLOCK_SET_AFTER_S * 1000;
	if (set != last) {
		if (!set)
			fprintf(stderr, "clock not set (before 2020): readings go without ts until it is\n");
		else if (last == 0)
			fprintf(stderr, "clock set: readings carry ts again\n");
		last = set;
	}
	return set ? ms : 0;
}

static void enqueue(unsigned long seq) {
	if (q_len == QUEUE_CAP) { /* full: drop the oldest, the gap shows in seq */
		q_head = (q_head + 1) % QUEUE_CAP;
		q_len--;
		dropped++;
	}
	struct reading *r = &queue[(q_head + q_len) % QUEUE_CAP];
	r->seq = seq;
	r->ts_ms = reading_ts();
	r->temp = read_temp(seq);
	r->hum = 40.0 + (seq % 20);
	q_len++;
}

static void usage(FILE *w) {
	fprintf(w,
	        "usage: moongate-device --device NAME [--broker tcp://HOST:PORT] [--username U]\n"
	        "                       [--interval-ms N] [--count N] [--temp C | --sensor FILE] [--gpio FILE]\n"
	        "                       [--until-cmd N] [--timeout-s N]\n"
	        "The password is read from MOONGATE_DEVICE_PASSWORD. --count 0 publishes until\n"
	        "SIGINT/SIGTERM. --until-cmd N: after the readings, wait for N commands.\n"
	        "Exit status: 0 done, 1 failure, 2 bad arguments, 3 --timeout-s reached.\n");
}

static int parse_long(const char *s, long min, long max, long *out) {
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

static int valid_name(const char *s) {
	size_t n = strlen(s);
	if (n == 0 || n > 64)
		return 0;
	for (; *s; s++)
		if (*s == '/' || *s == '+' || *s == '#' || (unsigned char)*s < 0x21)
			return 0;
	return 1;
}

int main(int argc, char **argv) {
	opt.broker = "tcp://127.0.0.1:1883";
	opt.interval_ms = 5000;
	opt.password = getenv("MOONGATE_DEVICE_PASSWORD");
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		int bad = 0;
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return EXIT_OK;
		} else if (!v) {
			bad = 1;
		} else if (strcmp(a, "--broker") == 0) {
			opt.broker = v;
		} else if (strcmp(a, "--device") == 0) {
			opt.device = v;
		} else if (strcmp(a, "--username") == 0) {
			opt.username = v;
		} else if (strcmp(a, "--sensor") == 0) {
			opt.sensor = v;
		} else if (strcmp(a, "--gpio") == 0) {
			opt.gpio = v;
		} else if (strcmp(a, "--interval-ms") == 0) {
			bad = parse_long(v, 10, 86400000, &opt.interval_ms);
		} else if (strcmp(a, "--count") == 0) {
			bad = parse_long(v, 0, 1000000000, &opt.count);
		} else if (strcmp(a, "--until-cmd") == 0) {
			bad = parse_long(v, 0, 1000000, &opt.until_cmd);
		} else if (strcmp(a, "--timeout-s") == 0) {
			bad = parse_long(v, 0, 86400 * 365, &opt.timeout_s);
		} else if (strcmp(a, "--temp") == 0) {
			char *end;
			opt.temp = strtod(v, &end);
			opt.has_temp = 1;
			/* NaN passes both comparisons and would print "nan": no JSON. */
			bad = end == v || *end || isnan(opt.temp) || opt.temp < -60 || opt.temp > 150;
		} else {
			bad = 1;
		}
		if (bad) {
			fprintf(stderr, "moongate-device: bad argument %s%s%s\n", a, v ? " " : "", v ? v : "");
			usage(stderr);
			return EXIT_USAGE;
		}
		i++;
	}
	if (!opt.device || !valid_name(opt.device)) {
		fprintf(stderr, "moongate-device: --device NAME is required: 1-64 characters, no '/', '+', '#' or spaces\n");
		usage(stderr);
		return EXIT_USAGE;
	}
	snprintf(t_telemetry, sizeof t_telemetry, "devices/%s/telemetry", opt.device);
	snprintf(t_cmd, sizeof t_cmd, "devices/%s/cmd", opt.device);
	snprintf(t_status, sizeof t_status, "devices/%s/status", opt.device);
	srand((unsigned)now_ms(CLOCK_REALTIME) ^ (unsigned)getpid());
	boot_id = (unsigned long)rand() & 0x3fffffff;
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct sigaction sa = {0};
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	MQTTClient c;
	/* The client id is the device name; the session lives in the broker. */
	int rc = MQTTClient_create(&c, opt.broker, opt.device, MQTTCLIENT_PERSISTENCE_NONE, NULL);
	if (rc != MQTTCLIENT_SUCCESS) {
		fprintf(stderr, "moongate-device: %s: %s\n", opt.broker, MQTTClient_strerror(rc));
		return EXIT_USAGE;
	}
	MQTTClient_setCallbacks(c, NULL, on_connection_lost, on_message, NULL);

	long long start = now_ms(CLOCK_MONOTONIC), next = start;
	unsigned long seq = 0;
	int connected = 0, failures = 0, code = EXIT_OK;
	long long retry_at = start, connected_at = start;
	for (;;) {
		long long now = now_ms(CLOCK_MONOTONIC);
		if (stop_requested)
			break;
		if (opt.timeout_s && now - start >= opt.timeout_s * 1000) {
			fprintf(stderr, "moongate-device: timed out after %lds (%d commands)\n", opt.timeout_s, atomic_load(&commands));
			code = EXIT_TIMEOUT;
			break;
		}
		int publishing = opt.count == 0 || (long)seq < opt.count;
		if (!publishing && q_len == 0 && atomic_load(&commands) >= opt.until_cmd)
			break;
		if (publishing && now >= next) {
			enqueue(++seq);
			next += opt.interval_ms;
			if (next < now)
				next = now + opt.interval_ms;
		}
		if (connected && atomic_load(&connection_lost)) {
			connected = 0;
			retry_at = now + backoff_after_drop(now - connected_at, &failures);
		}
		if (!connected && now >= retry_at) {
			if (mqtt_connect(c) == MQTTCLIENT_SUCCESS) {
				connected = 1;
				connected_at = now_ms(CLOCK_MONOTONIC);
			} else {
				retry_at = now_ms(CLOCK_MONOTONIC) + backoff_ms(failures++);
			}
		}
		if (connected && q_len > 0 && send_queue(c) != MQTTCLIENT_SUCCESS) {
			MQTTClient_disconnect(c, 0);
			connected = 0;
			long long t = now_ms(CLOCK_MONOTONIC);
			retry_at = t + backoff_after_drop(t - connected_at, &failures);
		}
		sleep_ms(publishing && next - now_ms(CLOCK_MONOTONIC) < 20 ? 1 : 20);
	}
	if (connected) {
		/* A clean DISCONNECT does not fire the will: say offline first. */
		MQTTClient_deliveryToken dt;
		if (MQTTClient_publish(c, t_status, 7, "offline", 1, 1, &dt) == MQTTCLIENT_SUCCESS)
			MQTTClient_waitForCompletion(c, dt, 5000);
		MQTTClient_disconnect(c, 2000);
	}
	MQTTClient_destroy(&c);
	printf("done: %lu readings, %d unsent, %lu dropped, %d commands, relay %s\n", seq, q_len, dropped,
	       atomic_load(&commands), atomic_load(&relay_on) ? "on" : "off");
	if (code == EXIT_OK && q_len > 0)
		code = EXIT_FAIL;
	return code;
}
