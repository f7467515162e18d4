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
		name: "sync status", summary: "state of the upstream sync targets",
		usage: "usage: moongate sync status [flags]\n\nShows each upstream sync target: connected, backlog, deliveries, drops,\nblob sends (pending/delivered/failed, bytes pending) and the last error.\n",
		nargs: exactArgs(0, ""),
		setup: func(*flag.FlagSet) remoteRun { return runSyncStatus },
	})
}

func runSyncStatus(ctx context.Context, c *apiClient, _ []string, stdout, _ io.Writer) error {
	var resp v1.SyncStatus
	raw, err := c.call(ctx, http.MethodGet, "/v1/sync", nil, nil, &resp)
	if err != nil {
		return err
	}
	if c.json {
		return printJSON(stdout, raw)
	}
	return renderSync(stdout, &resp)
}

func renderSync(w io.Writer, resp *v1.SyncStatus) error {
	if len(resp.GetTargets()) == 0 {
		_, err := fmt.Fprintln(w, "no sync targets configured")
		return err
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "TARGET\tKIND\tCONNECTED\tBACKLOG\tBACKLOG BYTES\tOLDEST\tDELIVERED\tPER SEC\tDROPPED\tBLOBS P/D/F\tBLOB BYTES\tLAST ERROR")
	for _, t := range resp.GetTargets() {
		lastErr := "-"
		if t.GetLastError() != "" {
			lastErr = fmtTime(t.GetLastErrorTime()) + " " + clipText(t.GetLastError(), 120)
		}
		// Blob sends: pending/delivered/failed, and the bytes waiting.
		blobs := fmt.Sprintf("%d/%d/%d", t.GetBlobsPending(), t.GetBlobsDelivered(), t.GetBlobsFailed())
		if d := t.GetBlobsDropped(); d > 0 {
			blobs += fmt.Sprintf(" (%d dropped)", d)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%.1f\t%d\t%s\t%s\t%s\n", t.GetName(), t.GetKind(), yesNo(t.GetConnected()), t.GetBacklogRecords(),
			fmtBytes(uint64(max(t.GetBacklogBytes(), 0))), fmtDuration(t.GetOldestPendingAge()), t.GetDeliveredTotal(), t.GetDeliveredPerSecond(),
			t.GetDroppedByQuota(), blobs, fmtBytes(uint64(max(t.GetBlobBytesPending(), 0))), lastErr)
	}
	return tw.Flush()
}
