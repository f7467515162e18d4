package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/firmware-examples/devsim"
	"github.com/moongate-edge/moongate/mqtt"
)

func TestParseArgs(t *testing.T) {
	c, o, err := parseArgs([]string{"--broker", "tcp://127.0.0.1:1", "--devices", "7", "--rate", "2.5", "--qos", "0",
		"--count", "3", "--username", "{device}", "--json", "--jitter", "0"}, func(k string) string {
		if k == EnvPassword {
			return "from-env"
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.Devices != 7 || c.Rate != 2.5 || c.QoS != 0 || c.Count != 3 || c.Username != "{device}" ||
		c.Password != "from-env" || !o.json || c.Jitter != 0 {
		t.Fatalf("%+v %+v", c, o)
	}
	if c, _, _ := parseArgs(nil, nil); c.QoS != 1 || c.Devices != 10 || c.Broker != "tcp://127.0.0.1:1883" {
		t.Fatalf("defaults %+v", c)
	}
	for _, bad := range [][]string{
		{"--qos", "2"}, {"--devices", "0"}, {"--devices", "-3"}, {"--rate", "0x"}, {"--rate", "-1"},
		{"--jitter", "2"}, {"--broker", "http://x"}, {"extra"}, {"--nope"}, {"--duration", "-1s"},
		{"--rate", "NaN"}, {"--topic-prefix", "a/b"},
	} {
		if _, _, err := parseArgs(bad, nil); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParseArgs(f *testing.F) {
	f.Add("--devices 5 --rate 1e3 --qos 1")
	f.Add("--broker mqtt://[::1]:1883 --jitter 1 --duration 1h")
	f.Add("--rate Inf --connect-rate -0")
	f.Fuzz(func(t *testing.T, line string) {
		c, _, err := parseArgs(strings.Fields(line), nil)
		if err != nil {
			return
		}
		// Whatever parses is a config Run accepts.
		if err := c.Validate(); err != nil {
			t.Fatalf("%q parsed but does not validate: %v", line, err)
		}
	})
}

func TestHelpAndUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "-devices") {
		t.Fatalf("help: %d %q", code, out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"--qos", "3"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "--qos 3") {
		t.Fatalf("bad flag: %d %q", code, errb.String())
	}
	if _, _, err := parseArgs([]string{"-h"}, nil); !errors.Is(err, flag.ErrHelp) {
		t.Fatal(err)
	}
}

// TestRunJSON runs the command against a real embedded broker.
func TestRunJSON(t *testing.T) {
	e, err := mqtt.NewEmbedded(mqtt.EmbeddedConfig{Listen: "127.0.0.1:0", AllowAnonymous: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.SetFilters(context.Background(), []string{"devices/+/telemetry"}); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background(), func(context.Context, *mqtt.Message) error { return nil }); err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code := run(ctx, []string{"--broker", "tcp://" + e.Addr().String(), "--devices", "3", "--count", "4", "--rate", "100", "--json"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var r devsim.Report
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if r.Devices != 3 || r.Sent != 12 || r.Acked != 12 || r.Latency.Count != 12 {
		t.Fatalf("report %+v", r)
	}
	out.Reset()
	if code := run(ctx, []string{"--broker", "tcp://" + e.Addr().String(), "--devices", "1", "--count", "1"}, &out, &errb); code != 0 ||
		!strings.Contains(out.String(), "sent 1, resent 0, acked 1") {
		t.Fatalf("text report %d: %s", code, out.String())
	}
}

// TestZeroFlagsRefused: the library takes 0 for "the default", so --rate 0
// ran at 1 message/s per device without a word; a 0 given on the command
// line is an error.
func TestZeroFlagsRefused(t *testing.T) {
	for _, bad := range [][]string{
		{"--rate", "0"}, {"--max-inflight", "0"}, {"--keepalive", "0"}, {"--connect-rate", "0"},
		{"--ack-timeout", "0"}, {"--reconnect-min", "0"}, {"--reconnect-max", "0s"},
	} {
		if c, _, err := parseArgs(bad, nil); err == nil || !strings.Contains(err.Error(), bad[0]+" 0") {
			t.Errorf("%q: %v (rate %v, max inflight %d, keepalive %v)", bad, err, c.Rate, c.MaxInflight, c.KeepAlive)
		}
	}
	if _, _, err := parseArgs([]string{"--rate", "0.5"}, nil); err != nil {
		t.Errorf("--rate 0.5: %v", err)
	}
}
