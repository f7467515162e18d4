package sync

import (
	"net/url"
	"testing"
)

// Blob names are sent with each segment escaped: the upstream decodes the
// path back to the bucket and the exact name. Before, a name with '%' was
// taken as escaped text: "a%41" went out as a path the upstream read as
// "aA", "100%.jpg" made the join fail and the blob was PUT to the base URL.
func TestBlobURLEscapesNames(t *testing.T) {
	tg := &httpTarget{cfg: TargetConfig{HTTP: HTTPConfig{URL: "https://up.example/gw"}}}
	for _, name := range []string{"a.jpg", "cam 1/a+b.jpg", "a%41", "100%.jpg", "x%2F..%2F..%2Fadmin", "dir/é?#.bin"} {
		raw, err := tg.blobURL("photos", name)
		if err != nil {
			t.Fatalf("%q: %v", name, err)
		}
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("%q: %s does not parse: %v", name, raw, err)
		}
		if want := "/gw/blobs/photos/" + name; u.Path != want {
			t.Errorf("%q: sent as %s, decoded by the upstream as %q, want %q", name, raw, u.Path, want)
		}
	}
}
