package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
)

func init() {
	registerRemote(&remoteCmd{
		name: "system", summary: "CPU, memory, disk, temperature, uptime and version of a gateway",
		usage: "usage: moongate system [flags]\n\nShows the gateway's machine (CPU, memory, disk of the data directory,\ntemperatures, uptime) and process (version, heap, counters).\n",
		nargs: exactArgs(0, ""),
		setup: func(*flag.FlagSet) remoteRun { return runSystem },
	})
}

func runSystem(ctx context.Context, c *apiClient, _ []string, stdout, _ io.Writer) error {
	var resp v1.SystemStatus
	raw, err := c.call(ctx, http.MethodGet, "/v1/system", nil, nil, &resp)
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, raw)
	}
	return renderSystem(stdout, &resp)
}

func renderSystem(w io.Writer, s *v1.SystemStatus) error {
	tw := newTable(w)
	fmt.Fprintf(tw, "gateway:\t%s\n", orDash(s.GetGatewayId()))
	fmt.Fprintf(tw, "version:\t%s\n", orDash(s.GetVersion()))
	fmt.Fprintf(tw, "uptime:\t%s (process %s)\n", fmtDuration(s.GetUptime()), fmtDuration(s.GetProcessUptime()))
	fmt.Fprintf(tw, "cpu:\t%.1f%% of %d CPUs\n", s.GetCpuPercent(), s.GetCpuCount())
	if m := s.GetMemory(); m != nil {
		fmt.Fprintf(tw, "memory:\t%s available of %s (%.1f%% used)\n", fmtBytes(m.GetAvailableBytes()), fmtBytes(m.GetTotalBytes()), m.GetUsedPercent())
	}
	if d := s.GetDisk(); d != nil {
		fmt.Fprintf(tw, "disk:\t%s free of %s (%.1f%% used) at %s\n", fmtBytes(d.GetFreeBytes()), fmtBytes(d.GetTotalBytes()), d.GetUsedPercent(), d.GetPath())
	}
	for _, t := range s.GetTemperatures() {
		fmt.Fprintf(tw, "temperature:\t%.1f°C %s\n", t.GetCelsius(), t.GetSensor())
	}
	fmt.Fprintf(tw, "process heap:\t%s\n", fmtBytes(s.GetProcessHeapBytes()))
	if g := s.GetGateway(); g != nil {
		fmt.Fprintf(tw, "ready:\t%s\n", yesNo(g.GetReady()))
		fmt.Fprintf(tw, "functions:\t%d running\n", g.GetFunctions())
		fmt.Fprintf(tw, "events:\t%d received, %d processed, %d failed attempts, %d dead-lettered, %d published, %d in backlog\n",
			g.GetReceived(), g.GetProcessed(), g.GetFailed(), g.GetDeadLettered(), g.GetPublished(), g.GetBacklog())
	}
	return tw.Flush()
}
