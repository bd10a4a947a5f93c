package swap

import (
	"archive/tar"
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Whatever an archive holds, unpacking never panics and never creates,
// changes or links anything outside its destination: the destination's
// parent holds exactly the destination and a sentinel file afterwards.
func FuzzUnpack(f *testing.F) {
	src := f.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "bin"), 0o755); err != nil {
		f.Fatal(err)
	}
	_ = os.WriteFile(filepath.Join(src, "bin", "app"), []byte("#!/bin/sh\n"), 0o755)
	_ = os.Symlink("bin/app", filepath.Join(src, "run"))
	var packed bytes.Buffer
	if _, err := Pack(src, &packed); err != nil {
		f.Fatal(err)
	}
	f.Add(packed.Bytes())
	hostile := func(hs ...*tar.Header) []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, h := range hs {
			_ = tw.WriteHeader(h)
			if h.Typeflag == tar.TypeReg {
				_, _ = tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
			}
		}
		_ = tw.Close()
		return b.Bytes()
	}
	f.Add(hostile(&tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: ".."}, &tar.Header{Name: "l/x", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644}))
	f.Add(hostile(&tar.Header{Name: "a", Typeflag: tar.TypeSymlink, Linkname: "/"}, &tar.Header{Name: "a/", Typeflag: tar.TypeDir, Mode: 0o777}))
	f.Add(hostile(&tar.Header{Name: "../x", Typeflag: tar.TypeReg, Size: 1, Mode: 0o4755}))
	f.Add(hostile(&tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		base := t.TempDir()
		dest := filepath.Join(base, "dest")
		if err := os.Mkdir(dest, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(base, "sentinel"), []byte("keep"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, _ = Unpack(bytes.NewReader(b), dest, Limits{MaxBytes: 1 << 20, MaxEntries: 1000})
		ents, err := os.ReadDir(base)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		if strings.Join(names, ",") != "dest,sentinel" {
			t.Fatalf("unpack changed the parent directory: %v", names)
		}
		if fi, err := os.Stat(filepath.Join(base, "sentinel")); err != nil || fi.Mode() != 0o600 {
			t.Fatalf("sentinel changed: %v %v", fi.Mode(), err)
		}
		if fi, err := os.Lstat(dest); err != nil || !fi.IsDir() {
			t.Fatalf("destination replaced: %v", err)
		}
		// Everything inside dest is a plain file, directory or symlink.
		_ = filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type()&^(fs.ModeDir|fs.ModeSymlink) != 0 {
				t.Errorf("%s has type %v", p, d.Type())
			}
			return nil
		})
		_ = filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() { // real directories only: Chmod would follow a symlink out
				_ = os.Chmod(p, 0o755) // so t.TempDir can clean up read-only dirs
			}
			return nil
		})
	})
}

// Whatever an archive holds, Layout never panics, and when it succeeds
// its regions cover the archive exactly, in order, framing and contents
// alternating, each contents region a clean local name with the bytes the
// tar reader gives for that file.
func FuzzLayout(f *testing.F) {
	src := f.TempDir()
	mkTreeF(f, src)
	var packed bytes.Buffer
	if _, err := Pack(src, &packed); err != nil {
		f.Fatal(err)
	}
	f.Add(packed.Bytes())
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0}, 1024))
	f.Fuzz(func(t *testing.T, b []byte) {
		regions, err := Layout(bytes.NewReader(b))
		if err != nil {
			return
		}
		off := int64(0)
		for i, r := range regions {
			if r.Off != off || r.Len < 0 || (i%2 == 1) != (r.Path != "") {
				t.Fatalf("region %d %+v does not follow on from %d, or breaks the alternation", i, r, off)
			}
			if i%2 == 1 {
				if clean, err := LocalName(r.Path); err != nil || clean != r.Path || r.Len == 0 {
					t.Fatalf("contents region %+v: name %v", r, err)
				}
			}
			off += r.Len
		}
		if len(regions)%2 != 1 || off != int64(len(b)) {
			t.Fatalf("%d regions cover %d of %d bytes", len(regions), off, len(b))
		}
	})
}

func mkTreeF(f *testing.F, dir string) {
	for name, data := range map[string]string{"bin/app": "#!/bin/sh\n", "a/b/c": strings.Repeat("c", 3000), "empty": ""} {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			f.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			f.Fatal(err)
		}
	}
}
