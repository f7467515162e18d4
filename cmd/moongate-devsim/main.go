// Command moongate-devsim runs a simulated fleet of MQTT devices against a
// moongate gateway (or any MQTT broker) and prints what happened: messages
// sent and acknowledged, commands received, reconnects, errors and the
// PUBACK latency. It only parses flags and waits for signals; the work is
// done by package firmware-examples/devsim.
//
//	moongate-devsim --broker tcp://127.0.0.1:1883 --devices 1000 --rate 1 --qos 1 --duration 30s
//
// Exit status: 0 when the run completed (see the report for unacknowledged
// messages), 1 when it failed (no device could connect), 2 on bad flags.
// Ctrl-C stops the run early and still prints the report.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/moongate-edge/moongate/firmware-examples/devsim"
)

// EnvPassword is read when --password is not given.
const EnvPassword = "MOONGATE_DEVSIM_PASSWORD"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the flags that are not part of devsim.Config.
type options struct {
	json    bool
	verbose bool
}

// flags declares the command's flags, writing into c, o and qos.
func flags(c *devsim.Config, o *options, qos *uint) *flag.FlagSet {
	fs := flag.NewFlagSet("moongate-devsim", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.Broker, "broker", "tcp://127.0.0.1:1883", "MQTT broker, tcp://host:port")
	fs.IntVar(&c.Devices, "devices", 10, "number of simulated devices")
	fs.StringVar(&c.DevicePrefix, "device-prefix", devsim.DefaultDevicePrefix, "device names: prefix + 5-digit index")
	fs.IntVar(&c.FirstDevice, "first-device", 0, "index of the first device")
	fs.Float64Var(&c.Rate, "rate", 1, "messages per second per device")
	fs.Float64Var(&c.Jitter, "jitter", 0.2, "spread of each interval, 0..1 (0.2 = ±20%)")
	fs.UintVar(qos, "qos", 1, "telemetry QoS, 0 or 1")
	fs.IntVar(&c.Count, "count", 0, "messages per device (0 = no limit)")
	fs.DurationVar(&c.Duration, "duration", 0, "publishing time (0 = no limit; with --count 0 too, until Ctrl-C)")
	fs.StringVar(&c.Username, "username", "", `MQTT username; "{device}" is replaced by the device name`)
	fs.StringVar(&c.Password, "password", "", "MQTT password (default $"+EnvPassword+`); "{device}" is replaced`)
	fs.StringVar(&c.TopicPrefix, "topic-prefix", devsim.DefaultTopicPrefix, "first topic level")
	fs.StringVar(&c.ClientIDPrefix, "client-id-prefix", "", "put before the device name to make the client id")
	fs.BoolVar(&c.CleanSession, "clean-session", false, "connect with a clean session (default: persistent)")
	fs.BoolVar(&c.NoStatus, "no-status", false, "no retained online/offline status and last will")
	fs.BoolVar(&c.NoCommands, "no-commands", false, "do not subscribe to the cmd topics")
	fs.IntVar(&c.PayloadBytes, "payload-bytes", 0, "pad payloads to about this size")
	fs.DurationVar(&c.KeepAlive, "keepalive", devsim.DefaultKeepAlive, "MQTT keep-alive")
	fs.Float64Var(&c.ConnectRate, "connect-rate", devsim.DefaultConnectRate, "new connections per second, whole fleet")
	fs.DurationVar(&c.ReconnectMin, "reconnect-min", devsim.DefaultReconnectMin, "first reconnect backoff")
	fs.DurationVar(&c.ReconnectMax, "reconnect-max", devsim.DefaultReconnectMax, "largest reconnect backoff")
	fs.IntVar(&c.MaxInflight, "max-inflight", devsim.DefaultMaxInflight, "unacknowledged QoS 1 messages per device")
	fs.DurationVar(&c.AckTimeout, "ack-timeout", devsim.DefaultAckTimeout, "wait for the last PUBACKs")
	fs.DurationVar(&c.Linger, "linger", 0, "stay connected after publishing, for commands")
	fs.BoolVar(&o.json, "json", false, "print the report as JSON")
	fs.BoolVar(&o.verbose, "v", false, "log connection errors")
	return fs
}

// parseArgs turns the command line into a validated Config.
func parseArgs(args []string, getenv func(string) string) (devsim.Config, options, error) {
	var c devsim.Config
	var o options
	qos := new(uint)
	fs := flags(&c, &o, qos)
	if err := fs.Parse(args); err != nil {
		return c, o, err
	}
	if fs.NArg() > 0 {
		return c, o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *qos > 1 {
		return c, o, fmt.Errorf("--qos %d: must be 0 or 1", *qos)
	}
	c.QoS = byte(*qos)
	if c.Password == "" && getenv != nil {
		c.Password = getenv(EnvPassword)
	}
	if c.Devices == 0 {
		return c, o, errors.New("--devices 0: nothing to simulate")
	}
	// The library takes 0 for "the default": given on the command line it
	// is a mistake (--rate 0 ran at 1 message/s per device).
	var zero error
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "rate", "max-inflight", "keepalive", "connect-rate", "ack-timeout", "reconnect-min", "reconnect-max":
			if v, ok := f.Value.(flag.Getter); ok && zero == nil {
				switch x := v.Get().(type) {
				case float64:
					if x == 0 {
						zero = fmt.Errorf("--%s 0: must be more than 0", f.Name)
					}
				case int:
					if x == 0 {
						zero = fmt.Errorf("--%s 0: must be more than 0", f.Name)
					}
				case time.Duration:
					if x == 0 {
						zero = fmt.Errorf("--%s 0: must be more than 0", f.Name)
					}
				}
			}
		}
	})
	if zero != nil {
		return c, o, zero
	}
	return c, o, c.Validate()
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, o, err := parseArgs(args, os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(stdout, "usage: moongate-devsim [flags]")
		printDefaults(stdout)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "moongate-devsim: %v\n", err)
		fmt.Fprintln(stderr, "usage: moongate-devsim [flags] (see --help)")
		return 2
	}
	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	r, err := devsim.Run(ctx, cfg)
	if r != nil {
		if o.json {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(r)
		} else {
			fmt.Fprint(stdout, r.String())
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "moongate-devsim: %v\n", err)
		return 1
	}
	return 0
}

func printDefaults(w io.Writer) {
	var c devsim.Config
	var o options
	var qos uint
	fs := flags(&c, &o, &qos)
	fs.SetOutput(w)
	fs.PrintDefaults()
}
