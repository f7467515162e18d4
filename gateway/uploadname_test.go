package gateway

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/gateway/trigger"
	"github.com/moongate-edge/moongate/luavm"
	"github.com/moongate-edge/moongate/store"
)

// TestUploadTriggerLongName: a valid blob name (1 to 1024 bytes) in a
// bucket a function watches must be stored and run the function. With a
// name of a few hundred bytes, the upload's commit is refused with
// ErrTooLarge ("chained entries of about N bytes, 545 reserved"): Commit
// sizes the chained entries from records and state only, not from the
// blob whose name the upload event carries three times.
func TestUploadTriggerLongName(t *testing.T) {
	ctx := context.Background()
	st := quietStore(t, store.Options{Buckets: map[string]store.Bucket{"photos": {}}})
	g := runGateway(t, Options{Store: st})
	onphoto := &Function{Name: "onphoto", Fingerprint: "v1", Uploads: []trigger.UploadTrigger{{Bucket: "photos"}},
		Spec: luavm.Spec{Source: []byte(`function handle(e) return {n = #e.payload} end`)}}
	if err := g.SetFunctions(ctx, []*Function{onphoto}); err != nil {
		t.Fatal(err)
	}
	for i, n := range []int{10, 150, 300, 1000} {
		name := strings.Repeat("x", n)
		if _, err := g.PutBlob(ctx, "photos", name, "image/jpeg", strings.NewReader("snapshot")); err != nil {
			t.Fatalf("PutBlob of a %d-byte name: %v", n, err)
		}
		waitFor(t, 10*time.Second, "onphoto's record", func() bool { return len(allRecords(t, st, "onphoto")) == i+1 })
	}
}
