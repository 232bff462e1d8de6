//! The table of inputs and the types Go's `http.DetectContentType` gives them.
use super::*;

const XML: &str = "text/xml; charset=utf-8";

/// Repeats `byte` `count` times, then appends `tail`.
fn padded(byte: u8, count: usize, tail: &[u8]) -> Vec<u8> {
    let mut out = vec![byte; count];
    out.extend_from_slice(tail);
    out
}

/// Every case as (description, input, what Go's DetectContentType returns).
fn cases() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let fixed: &[(&str, &[u8], &str)] = &[
        // Plain text and the binary fallback.
        ("empty", b"", TEXT_UTF8),
        ("binary 1 2 3", b"\x01\x02\x03", OCTET_STREAM),
        ("ascii text", b"Hello, world!\n", TEXT_UTF8),
        ("utf-8 text", "snowman \u{2603} here".as_bytes(), TEXT_UTF8),
        ("whitespace only", b" \t\r\n\x0c", TEXT_UTF8),
        ("json object is not detected", b"{\"a\": 1}", TEXT_UTF8),
        ("json array is not detected", b"[1, 2, 3]", TEXT_UTF8),
        (
            "invalid utf-8 high bytes are text",
            b"abc\x80\x81\xfe",
            TEXT_UTF8,
        ),
        ("escape byte is text", b"\x1b[31mred\x1b[0m", TEXT_UTF8),
        ("delete byte is text", b"abc\x7f", TEXT_UTF8),
        ("tab lf ff cr are text", b"a\tb\nc\x0cd\re", TEXT_UTF8),
        ("nul is binary", b"abc\x00", OCTET_STREAM),
        ("0x08 is binary", b"abc\x08", OCTET_STREAM),
        ("vertical tab is binary", b"abc\x0b", OCTET_STREAM),
        ("0x0e is binary", b"abc\x0e", OCTET_STREAM),
        ("0x1a is binary", b"abc\x1a", OCTET_STREAM),
        ("0x1c is binary", b"abc\x1c", OCTET_STREAM),
        ("0x1f is binary", b"abc\x1f", OCTET_STREAM),
        ("whitespace then nul", b"  \x00", OCTET_STREAM),
        (
            "svg is not detected",
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
            TEXT_UTF8,
        ),
        ("lone high bytes", b"\xff\xd8", TEXT_UTF8),
        ("two-byte utf-16be bom", b"\xfe\xff", TEXT_UTF8),
        // HTML tags.
        ("doctype upper", b"<!DOCTYPE HTML>", HTML),
        ("doctype lower", b"<!doctype html>", HTML),
        ("doctype mixed", b"<!DocType Html PUBLIC \"x\">", HTML),
        ("doctype double space", b"<!DOCTYPE  HTML>", TEXT_UTF8),
        ("doctype tab", b"<!DOCTYPE\tHTML>", TEXT_UTF8),
        ("doctype no terminator", b"<!DOCTYPE HTML", TEXT_UTF8),
        ("html", b"<html>", HTML),
        ("html mixed case", b"<HtMl><bOdY>blah</body></html>", HTML),
        ("html space attr", b"<html lang=\"en\">", HTML),
        ("html at end of input", b"<html", TEXT_UTF8),
        ("html newline terminator", b"<html\n>", TEXT_UTF8),
        ("html slash terminator", b"<html/>", TEXT_UTF8),
        ("htmlx", b"<htmlx>", TEXT_UTF8),
        ("head", b"<head>", HTML),
        ("script", b"<script>alert(1)</script>", HTML),
        ("script upper", b"<SCRIPT type=\"x\">", HTML),
        ("iframe", b"<iframe src=x>", HTML),
        ("h1", b"<h1>Title</h1>", HTML),
        ("h2 is not a signature", b"<h2>Title</h2>", TEXT_UTF8),
        ("div", b"<div>", HTML),
        ("font", b"<font color=red>", HTML),
        ("table", b"<table>", HTML),
        ("a", b"<a href=\"/\">x</a>", HTML),
        ("abbr is not a", b"<abbr>", TEXT_UTF8),
        ("style", b"<style>", HTML),
        ("title", b"<title>x</title>", HTML),
        ("b", b"<b>bold</b>", HTML),
        ("body", b"<BODY>", HTML),
        ("br", b"<br>", HTML),
        ("br self-closing", b"<br/>", TEXT_UTF8),
        ("p", b"<p>para</p>", HTML),
        ("pre is not p", b"<pre>", TEXT_UTF8),
        ("span is not a signature", b"<span>", TEXT_UTF8),
        ("comment", b"<!-- hi -->", HTML),
        ("comment closed at once", b"<!-->", HTML),
        ("comment no space", b"<!--hi-->", TEXT_UTF8),
        ("leading spaces", b"   <!DOCTYPE HTML>...", HTML),
        ("leading crlf", b"\r\n<html>...", HTML),
        ("leading tab and form feed", b"\t\x0c<p>x", HTML),
        ("leading vertical tab", b"\x0b<html>", OCTET_STREAM),
        ("leading letter", b"x<html>", TEXT_UTF8),
        ("leading nbsp", b"\xc2\xa0<html>", TEXT_UTF8),
        ("html beats binary", b"<html>\x00\x01", HTML),
        ("utf-8 bom before html", b"\xef\xbb\xbf<html>", TEXT_UTF8),
        // XML.
        ("xml prolog", b"<?xml version=\"1.0\"?><a/>", XML),
        ("xml leading newline", b"\n<?xml!", XML),
        ("xml leading spaces", b"   <?xml", XML),
        ("xml exact length", b"<?xml", XML),
        ("xml upper case", b"<?XML version=\"1.0\"?>", TEXT_UTF8),
        ("xml truncated", b"<?xm", TEXT_UTF8),
        ("xml beats binary", b"<?xml\x00", XML),
        ("xml without prolog", b"<note><to>x</to></note>", TEXT_UTF8),
        // Documents.
        ("pdf", b"%PDF-1.7\n%\xe2\xe3", "application/pdf"),
        ("pdf exact", b"%PDF-", "application/pdf"),
        ("pdf lower case", b"%pdf-1.4", TEXT_UTF8),
        ("pdf no dash", b"%PDF", TEXT_UTF8),
        ("pdf after whitespace", b" %PDF-1.4", TEXT_UTF8),
        ("postscript", b"%!PS-Adobe-3.0\n", "application/postscript"),
        ("postscript short", b"%!PS-Adobe", TEXT_UTF8),
        // Byte order marks.
        (
            "utf-16be bom",
            b"\xfe\xff\x00h\x00i",
            "text/plain; charset=utf-16be",
        ),
        (
            "utf-16be bom any tail",
            b"\xfe\xff\xff\xff",
            "text/plain; charset=utf-16be",
        ),
        (
            "utf-16le bom",
            b"\xff\xfeh\x00i\x00",
            "text/plain; charset=utf-16le",
        ),
        (
            "utf-32le bom reads as utf-16le",
            b"\xff\xfe\x00\x00",
            "text/plain; charset=utf-16le",
        ),
        ("utf-16le bom 3 bytes", b"\xff\xfeh", TEXT_UTF8),
        ("utf-8 bom", b"\xef\xbb\xbfhello", TEXT_UTF8),
        ("utf-8 bom beats binary", b"\xef\xbb\xbf\x00\x01", TEXT_UTF8),
        ("utf-8 bom alone", b"\xef\xbb\xbf", TEXT_UTF8),
        ("bom after whitespace", b" \xfe\xff\x00\x00", OCTET_STREAM),
        // Images.
        ("icon", b"\x00\x00\x01\x00\x01\x00", "image/x-icon"),
        ("cursor", b"\x00\x00\x02\x00", "image/x-icon"),
        ("not an icon", b"\x00\x00\x03\x00", OCTET_STREAM),
        ("bmp", b"BM\x8a\x00\x00\x00", "image/bmp"),
        ("bmp catches text", b"BMW makes cars", "image/bmp"),
        ("bmp exact", b"BM", "image/bmp"),
        ("bmp lower case", b"bm", TEXT_UTF8),
        ("gif87a", b"GIF87a", "image/gif"),
        ("gif89a", b"GIF89a\x01\x00\x01\x00", "image/gif"),
        ("gif88a", b"GIF88a", TEXT_UTF8),
        ("webp", b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
        ("webp exact", b"RIFF\x00\x00\x00\x00WEBPVP", "image/webp"),
        ("webp any size bytes", b"RIFFabcdWEBPVP8L", "image/webp"),
        ("webp truncated", b"RIFF\x00\x00\x00\x00WEBPV", OCTET_STREAM),
        ("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png"),
        ("png truncated", b"\x89PNG\r\n\x1a", OCTET_STREAM),
        ("jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        ("jpeg exact", b"\xff\xd8\xff", "image/jpeg"),
        // Audio and video.
        (
            "aiff",
            b"FORM\x00\x00\x00\x00AIFFCOMM\x00\x00\x00\x12",
            "audio/aiff",
        ),
        ("aiff any size", b"FORMabcdAIFF", "audio/aiff"),
        (
            "aifc is not aiff",
            b"FORM\x00\x00\x00\x00AIFC",
            OCTET_STREAM,
        ),
        ("mp3 id3", b"ID3\x04\x00\x00\x00\x00\x00\x00", "audio/mpeg"),
        ("mp3 id3 exact", b"ID3", "audio/mpeg"),
        ("id3 lower case", b"id3", TEXT_UTF8),
        ("ogg", b"OggS\x00\x02\x00\x00\x00\x00", "application/ogg"),
        ("ogg without version byte", b"OggS", TEXT_UTF8),
        ("ogg wrong version", b"OggS\x01", OCTET_STREAM),
        ("ogg lower case", b"oggS\x00", OCTET_STREAM),
        ("midi", b"MThd\x00\x00\x00\x06\x00\x01", "audio/midi"),
        ("midi wrong length", b"MThd\x00\x00\x00\x07", OCTET_STREAM),
        ("avi", b"RIFF,O\n\x00AVI LIST", "video/avi"),
        ("avi no space", b"RIFF\x00\x00\x00\x00AVI", OCTET_STREAM),
        ("wav", b"RIFF\x24\x08\x00\x00WAVEfmt ", "audio/wave"),
        ("wav any size", b"RIFFxxxxWAVE", "audio/wave"),
        ("riff unknown", b"RIFF\x00\x00\x00\x00ABCD", OCTET_STREAM),
        (
            "mp4 major brand",
            b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom",
            "video/mp4",
        ),
        (
            "mp4 compatible brand",
            b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00iso2mp41",
            "video/mp4",
        ),
        (
            "mp4 text box size",
            b"\x00\x00\x00\x0cftypmp4!",
            "video/mp4",
        ),
        (
            "mp4 brand only in minor version",
            b"\x00\x00\x00\x14ftypisom mp4iso2",
            OCTET_STREAM,
        ),
        (
            "mp4 brand past box",
            b"\x00\x00\x00\x10ftypisom\x00\x00\x00\x00mp41",
            OCTET_STREAM,
        ),
        (
            "mp4 size not multiple of 4",
            b"\x00\x00\x00\x0dftypmp42\x00",
            OCTET_STREAM,
        ),
        (
            "mp4 size beyond input",
            b"\x00\x00\x00\x20ftypmp42\x00\x00\x00\x00",
            OCTET_STREAM,
        ),
        ("mp4 size zero", b"\x00\x00\x00\x00ftypmp42", OCTET_STREAM),
        ("mp4 size eight", b"\x00\x00\x00\x08ftypmp42", OCTET_STREAM),
        ("mp4 shorter than 12", b"\x00\x00\x00\x08ftyp", OCTET_STREAM),
        (
            "mp4 no ftyp",
            b"\x00\x00\x00\x18moovmp42\x00\x00\x00\x00mp42isom",
            OCTET_STREAM,
        ),
        (
            "mp4 brand upper case",
            b"\x00\x00\x00\x0cftypMP42",
            OCTET_STREAM,
        ),
        ("webm", b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", "video/webm"),
        // Fonts.
        (
            "eot",
            b"\x9a\x00\x00\x00\x00\x00\x00\x00\x01\x00\x02\x00\x04\x00\x00\x00\
              \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
              \x00\x00LP",
            "application/vnd.ms-fontobject",
        ),
        (
            "eot catches text",
            b"0123456789abcdefghijklmnopqrstuvwxLP and more",
            "application/vnd.ms-fontobject",
        ),
        (
            "eot beats ttf",
            b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
              \x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\
              \x00\x00LP",
            "application/vnd.ms-fontobject",
        ),
        (
            "eot magic one byte late",
            b"0123456789abcdefghijklmnopqrstuvwxyLP",
            TEXT_UTF8,
        ),
        (
            "ttf",
            b"\x00\x01\x00\x00\x00\x17\x01\x00\x00\x04",
            "font/ttf",
        ),
        ("otf", b"OTTO\x00\x0e\x00\x80", "font/otf"),
        ("otf as text", b"OTTO was here", "font/otf"),
        (
            "font collection",
            b"ttcf\x00\x02\x00\x00",
            "font/collection",
        ),
        ("woff", b"wOFF\x00\x01\x00\x00", "font/woff"),
        ("woff2", b"wOF2\x00\x01\x00\x00", "font/woff2"),
        // Archives.
        (
            "gzip",
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00",
            "application/x-gzip",
        ),
        ("gzip other method", b"\x1f\x8b\x09", OCTET_STREAM),
        ("zip", b"PK\x03\x04\x14\x00", "application/zip"),
        (
            "empty zip is not detected",
            b"PK\x05\x06\x00\x00",
            OCTET_STREAM,
        ),
        (
            "rar 4",
            b"Rar!\x1a\x07\x00\xcf",
            "application/x-rar-compressed",
        ),
        (
            "rar 5",
            b"Rar!\x1a\x07\x01\x00",
            "application/x-rar-compressed",
        ),
        ("rar unknown version", b"Rar!\x1a\x07\x02\x00", OCTET_STREAM),
        ("rar with space", b"Rar \x1a\x07\x00", OCTET_STREAM),
        ("wasm", b"\x00asm\x01\x00\x00\x00", "application/wasm"),
        ("wasm upper case", b"\x00ASM\x01\x00\x00\x00", OCTET_STREAM),
    ];
    let mut all: Vec<_> = fixed
        .iter()
        .map(|&(name, input, want)| (name, input.to_vec(), want))
        .collect();

    // Only the first 512 bytes count.
    all.extend([
        ("nul at byte 511", padded(b'a', 511, b"\x00"), OCTET_STREAM),
        (
            "nul at byte 512 is ignored",
            padded(b'a', 512, b"\x00"),
            TEXT_UTF8,
        ),
        (
            "512 spaces then html",
            padded(b' ', 512, b"<html>"),
            TEXT_UTF8,
        ),
        (
            "html ending at byte 511",
            padded(b' ', 506, b"<html>"),
            HTML,
        ),
        (
            "html terminator cut off",
            padded(b' ', 507, b"<html>"),
            TEXT_UTF8,
        ),
        ("xml after 507 spaces", padded(b' ', 507, b"<?xml"), XML),
        ("xml cut off", padded(b' ', 508, b"<?xml"), TEXT_UTF8),
        ("long binary", vec![0u8; 600], OCTET_STREAM),
        ("long text", padded(b'z', 4096, b""), TEXT_UTF8),
        (
            "long pdf",
            [b"%PDF-".as_slice(), &[b'x'; 1000]].concat(),
            "application/pdf",
        ),
        (
            "whitespace then eot magic",
            padded(b' ', 34, b"LP"),
            "application/vnd.ms-fontobject",
        ),
    ]);

    // MP4 boxes near the 512-byte limit.
    let mut mp4_508 = vec![0u8; 600];
    mp4_508[..12].copy_from_slice(b"\x00\x00\x01\xfcftypisom");
    mp4_508[504..507].copy_from_slice(b"mp4");
    all.push(("mp4 box of 508 bytes", mp4_508, "video/mp4"));
    // A 512-byte box starts 00 00 02 00, the cursor signature, which is checked first.
    let mut mp4_512 = vec![0u8; 600];
    mp4_512[..12].copy_from_slice(b"\x00\x00\x02\x00ftypmp42");
    all.push((
        "mp4 box of 512 bytes reads as cursor",
        mp4_512,
        "image/x-icon",
    ));
    let mut mp4_516 = vec![0u8; 600];
    mp4_516[..12].copy_from_slice(b"\x00\x00\x02\x04ftypmp42");
    all.push(("mp4 box larger than 512 bytes", mp4_516, OCTET_STREAM));
    all
}

#[test]
fn matches_go_detect_content_type() {
    let mut failures = Vec::new();
    for (name, input, want) in cases() {
        let got = sniff(&input);
        if got != want {
            failures.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn case_names_are_unique() {
    let cases = cases();
    let mut names: Vec<_> = cases.iter().map(|case| case.0).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len());
}

#[test]
fn every_rule_is_exercised() {
    let cases = cases();
    for index in 0..RULES.len() {
        let hit = cases.iter().any(|(_, input, _)| {
            let input = &input[..input.len().min(SNIFF_LEN)];
            let first_non_ws = input
                .iter()
                .position(|&b| !is_whitespace(b))
                .unwrap_or(input.len());
            let first_hit = RULES
                .iter()
                .position(|r| r.check(input, first_non_ws).is_some());
            first_hit == Some(index)
        });
        assert!(hit, "no test case is decided by rule #{index}");
    }
}
