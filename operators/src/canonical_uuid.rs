//! A UUID key's canonical text: 36 bytes, `8-4-4-4-12` lower-case hex digits, as the `uuid`
//! crate prints it (`Uuid::hyphenated().encode_lower`).
//!
//! Every record read parses its key, and every curated row written prints it back, so both run
//! eight digits at a time in a 64-bit word (one byte per digit) instead of digit by digit: about
//! twice as fast as the `uuid` crate's parser and printer (benches/README.md). Any other spelling
//! of a UUID (upper case, braces, no hyphens, a URN) is left to [`uuid::Uuid::try_parse`].

/// 1 in every byte of a word.
const ONES: u64 = 0x0101_0101_0101_0101;

/// The value of `text` if it is a UUID's canonical text; `None` for any other bytes.
pub fn parse(text: &[u8]) -> Option<u128> {
    let text = <&[u8; 36]>::try_from(text).ok()?;
    if text[8] != b'-' || text[13] != b'-' || text[18] != b'-' || text[23] != b'-' {
        return None;
    }
    let word = |at: usize| u64::from_be_bytes([text[at], text[at + 1], text[at + 2], text[at + 3], text[at + 4], text[at + 5], text[at + 6], text[at + 7]]);
    let half = |at: usize| u64::from(u32::from_be_bytes([text[at], text[at + 1], text[at + 2], text[at + 3]]));
    let first = eight_digits(word(0))?;
    let second = eight_digits(half(9) << 32 | half(14))?;
    let third = eight_digits(half(19) << 32 | half(24))?;
    let fourth = eight_digits(word(28))?;
    Some(u128::from(first) << 96 | u128::from(second) << 64 | u128::from(third) << 32 | u128::from(fourth))
}

/// Prints `value`'s canonical text into `out`.
pub fn print(value: u128, out: &mut [u8; 36]) {
    let [first, second, third, fourth] = [(value >> 96) as u32, (value >> 64) as u32, (value >> 32) as u32, value as u32].map(digits_of);
    out[0..8].copy_from_slice(&first);
    out[8] = b'-';
    out[9..13].copy_from_slice(&second[..4]);
    out[13] = b'-';
    out[14..18].copy_from_slice(&second[4..]);
    out[18] = b'-';
    out[19..23].copy_from_slice(&third[..4]);
    out[23] = b'-';
    out[24..28].copy_from_slice(&third[4..]);
    out[28..36].copy_from_slice(&fourth);
}

/// The value of eight lower-case hex digits, the first in the word's top byte; `None` if any
/// byte is not one.
///
/// Each byte's digit is its low nibble, plus 9 for a letter (bit 6 set: `a`–`f` are 0x61–0x66,
/// `0`–`9` are 0x30–0x39). Any byte at all gives some number under 25 that way, without carries
/// between bytes, so a byte is a digit exactly when that number is under 16 and prints back as
/// the byte itself.
fn eight_digits(text: u64) -> Option<u32> {
    let nibbles = (text & (ONES * 0x0F)) + ((text >> 6) & ONES) * 9;
    if nibbles & (ONES * 0xF0) != 0 || ascii_of(nibbles) != text {
        return None;
    }
    let pairs = (nibbles | nibbles >> 4) & 0x00FF_00FF_00FF_00FF;
    let quads = (pairs | pairs >> 8) & 0x0000_FFFF_0000_FFFF;
    Some((quads | quads >> 16) as u32)
}

/// The eight hex digits of `value`, most significant first.
fn digits_of(value: u32) -> [u8; 8] {
    let value = u64::from(value);
    let quads = (value | value << 16) & 0x0000_FFFF_0000_FFFF;
    let pairs = (quads | quads << 8) & 0x00FF_00FF_00FF_00FF;
    let nibbles = (pairs | pairs << 4) & (ONES * 0x0F);
    ascii_of(nibbles).to_be_bytes()
}

/// Each byte's number (under 25) as a digit: `0`–`9` from 0x30, then letters from `a` (0x61, 39
/// further on).
fn ascii_of(nibbles: u64) -> u64 {
    let over_nine = ((nibbles + ONES * 6) >> 4) & ONES;
    nibbles + ONES * 0x30 + over_nine * 0x27
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    /// What `parse` must say: the uuid crate's value, for canonical (lower-case, hyphenated) text.
    fn oracle(text: &[u8]) -> Option<u128> {
        let lower_hyphenated = text.len() == 36 && !text.iter().any(u8::is_ascii_uppercase);
        uuid::Uuid::try_parse_ascii(text).ok().filter(|_| lower_hyphenated).map(|u| u.as_u128())
    }

    #[test]
    fn parsing_agrees_with_the_uuid_crate_for_every_byte_at_every_position() {
        let canonical = b"0123abcd-4567-89ef-a0b1-c2d3e4f5a6b7";
        assert_eq!(super::parse(canonical), oracle(canonical));
        assert!(oracle(canonical).is_some());
        for position in 0..36 {
            for byte in 0..=255u8 {
                let mut text = *canonical;
                text[position] = byte;
                assert_eq!(super::parse(&text), oracle(&text), "byte {byte:#04x} at {position}");
            }
        }
    }

    #[test]
    fn parsing_agrees_with_the_uuid_crate_on_seeded_random_mutations() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(36);
        let replacements = b"0123456789abcdefABCDEFgG-{}/: \x00\x7f\xff";
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..50_000 {
            let mut text = uuid::Uuid::from_u128(rng.random()).hyphenated().to_string().into_bytes();
            for _ in 0..rng.random_range(0..3) {
                let at = rng.random_range(0..text.len());
                text[at] = replacements[rng.random_range(0..replacements.len())];
            }
            let expected = oracle(&text);
            assert_eq!(super::parse(&text), expected, "{:?}", String::from_utf8_lossy(&text));
            if expected.is_some() { accepted += 1 } else { refused += 1 }
        }
        assert!(accepted > 5_000 && refused > 5_000, "both outcomes are exercised: {accepted} / {refused}");
        for text in ["", "0123abcd-0000-4000-8000-00000000beef0", "0123abcd-0000-4000-8000-00000000bee", "0123abcd00000-4000-8000-00000000beef"] {
            assert_eq!(super::parse(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn printing_agrees_with_the_uuid_crate_and_parses_back() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let edges = [0, u128::MAX, 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef, 0x9999_aaaa_0000_ffff_1010_f0f0_0a0a_a0a0];
        for value in edges.into_iter().chain((0..50_000).map(|_| rng.random::<u128>())) {
            let mut out = [0u8; 36];
            super::print(value, &mut out);
            assert_eq!(std::str::from_utf8(&out).unwrap(), uuid::Uuid::from_u128(value).hyphenated().to_string());
            assert_eq!(super::parse(&out), Some(value));
        }
    }
}
