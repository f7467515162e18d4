package gateway

import (
	"context"
	"testing"
)

// A deploy through the API of a function whose name a sync.forward entry
// uses is not deployed (withForwards drops it): the deploy must say so,
// not report version 1 as deployed and running the forward's code.
func TestDeployForwardNameRefused(t *testing.T) {
	extra := "sync:\n  targets:\n    - {name: up, type: http, http: {url: \"http://127.0.0.1:1/ingest\"}}\n  forward:\n    - {name: raw, trigger: \"devices/{device}/telemetry\", targets: [up]}\n"
	p := startInProcess(t, testConfig(t.TempDir(), "", extra))
	d := p.d
	res, err := d.DeployFunction(context.Background(), DeployRequest{Name: "raw", Manifest: []byte("triggers:\n  - mqtt: other/{device}\n"),
		Source: []byte(`function handle(e) return {mine = true} end`)})
	f := d.Gateway().Lookup("raw")
	if err == nil {
		t.Fatalf("deploy of %q returned version %d active, no error; the gateway runs the sync.forward function (patterns %v, fingerprint %.12s), not the deployed one",
			"raw", res.Function.Version, patternsOf(f), f.Fingerprint)
	}
	// A second deploy of the same name is refused: the two disagree.
}

func patternsOf(f *Function) []string {
	var out []string
	if f != nil {
		for _, p := range f.Patterns {
			out = append(out, p.String())
		}
	}
	return out
}
