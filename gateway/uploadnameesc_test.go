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

// A valid blob name made of characters JSON escapes ('<', '>', '&' become
// \u003c...: six bytes each) makes the upload event's payload six times
// the name: the room Commit reserves for the chained entry (three times
// the name) is too small and the upload is refused as too large.
func TestUploadNameEscapedInPayload(t *testing.T) {
	for _, prof := range []store.Profile{store.ProfileLowMemory, store.ProfileLarge} {
		ctx := context.Background()
		st := quietStore(t, store.Options{Profile: prof, Buckets: map[string]store.Bucket{"photos": {}}})
		g := runGateway(t, Options{Store: st})
		onphoto := &Function{Name: "onphoto", Fingerprint: "v1", Uploads: []trigger.UploadTrigger{{Bucket: "photos"}},
			Spec: luavm.Spec{Source: []byte(`function handle(e) return {n = #e.payload} end`)}}
		if err := g.SetFunctions(ctx, []*Function{onphoto}); err != nil {
			t.Fatal(err)
		}
		ok := 0
		for n := 20; n <= 1024; n += 4 {
			name := strings.Repeat("<", n)
			if _, err := g.PutBlob(ctx, "photos", name, "image/jpeg", strings.NewReader("snapshot")); err != nil {
				t.Fatalf("profile %v: PutBlob of a valid %d-byte name: %v", prof, n, err)
			}
			ok++
			waitFor(t, 10*time.Second, "onphoto's record", func() bool { return len(allRecords(t, st, "onphoto")) == ok })
		}
	}
}
