"""Unicode classes as the `tokenizers` library sees them, and its regexes translated to Python's `re`.

tokenizers runs its pre-tokenizer regexes with Oniguruma, whose \\p{L}, \\p{N} and \\p{P} follow Unicode 16,
and splits digits off with Rust's char::is_numeric (Unicode 17 in the wheels checked). Python's unicodedata
is older (Python 3.11 has Unicode 14: 9272 letters fewer), and `re`'s \\s also matches U+001C..U+001F, which
Oniguruma's \\s (Unicode White_Space) does not. So the classes are range tables, read off tokenizers 0.23.3
itself: the same ids on every Python. So is the set of code points to which the library's (Unicode 9)
normalizer gives a combining class, which normalizers.NFC needs. tests/llm/test_tokenizers_py.py compares
the tables with the installed library and, run as a script, prints them as that library has them.

`translate` accepts the regex syntax tokenizer.json files use (literals, escaped punctuation, \\r \\n \\t \\f
\\v, \\s \\S, \\p{L} \\p{N} \\p{P} and \\P{...}, [classes] with ranges, (?:...), (?i:...), (?=...), (?!...),
alternation, greedy and lazy quantifiers) and refuses the rest with BackendError, rather than guess where
Python and Oniguruma might differ: anchors (Oniguruma's ^ and $ match at every line), possessive
quantifiers, other escapes and properties, nested classes, patterns that can match the empty string, and
non-ASCII letters or classes inside (?i:...) (Unicode case folding differs; Oniguruma's (?i:ss) matches
"ß"). An ASCII letter inside (?i:...) becomes the class Oniguruma matches: [sSſ], [kKK], [iI] (Python's
`re` would also take "İ" and "ı" for i).
"""
from __future__ import annotations

import functools
import re

from loom.llm.tokenizers_py._common import unsupported

MAX_CODE_POINT = 0x10FFFF

# Code point ranges (hex, "first-last" or one code point), from tokenizers 0.23.3: Oniguruma's \p{L},
# \p{N}, \p{P}, and what Rust's char::is_numeric adds to \p{N}.
_LETTER = (
    "41-5a 61-7a aa b5 ba c0-d6 d8-f6 f8-2c1 2c6-2d1 2e0-2e4 2ec 2ee 370-374 376-377 37a-37d 37f 386 388-38a "
    "38c 38e-3a1 3a3-3f5 3f7-481 48a-52f 531-556 559 560-588 5d0-5ea 5ef-5f2 620-64a 66e-66f 671-6d3 6d5 "
    "6e5-6e6 6ee-6ef 6fa-6fc 6ff 710 712-72f 74d-7a5 7b1 7ca-7ea 7f4-7f5 7fa 800-815 81a 824 828 840-858 "
    "860-86a 870-887 889-88e 8a0-8c9 904-939 93d 950 958-961 971-980 985-98c 98f-990 993-9a8 9aa-9b0 9b2 "
    "9b6-9b9 9bd 9ce 9dc-9dd 9df-9e1 9f0-9f1 9fc a05-a0a a0f-a10 a13-a28 a2a-a30 a32-a33 a35-a36 a38-a39 "
    "a59-a5c a5e a72-a74 a85-a8d a8f-a91 a93-aa8 aaa-ab0 ab2-ab3 ab5-ab9 abd ad0 ae0-ae1 af9 b05-b0c b0f-b10 "
    "b13-b28 b2a-b30 b32-b33 b35-b39 b3d b5c-b5d b5f-b61 b71 b83 b85-b8a b8e-b90 b92-b95 b99-b9a b9c b9e-b9f "
    "ba3-ba4 ba8-baa bae-bb9 bd0 c05-c0c c0e-c10 c12-c28 c2a-c39 c3d c58-c5a c5d c60-c61 c80 c85-c8c c8e-c90 "
    "c92-ca8 caa-cb3 cb5-cb9 cbd cdd-cde ce0-ce1 cf1-cf2 d04-d0c d0e-d10 d12-d3a d3d d4e d54-d56 d5f-d61 "
    "d7a-d7f d85-d96 d9a-db1 db3-dbb dbd dc0-dc6 e01-e30 e32-e33 e40-e46 e81-e82 e84 e86-e8a e8c-ea3 ea5 "
    "ea7-eb0 eb2-eb3 ebd ec0-ec4 ec6 edc-edf f00 f40-f47 f49-f6c f88-f8c 1000-102a 103f 1050-1055 105a-105d "
    "1061 1065-1066 106e-1070 1075-1081 108e 10a0-10c5 10c7 10cd 10d0-10fa 10fc-1248 124a-124d 1250-1256 1258 "
    "125a-125d 1260-1288 128a-128d 1290-12b0 12b2-12b5 12b8-12be 12c0 12c2-12c5 12c8-12d6 12d8-1310 1312-1315 "
    "1318-135a 1380-138f 13a0-13f5 13f8-13fd 1401-166c 166f-167f 1681-169a 16a0-16ea 16f1-16f8 1700-1711 "
    "171f-1731 1740-1751 1760-176c 176e-1770 1780-17b3 17d7 17dc 1820-1878 1880-1884 1887-18a8 18aa 18b0-18f5 "
    "1900-191e 1950-196d 1970-1974 1980-19ab 19b0-19c9 1a00-1a16 1a20-1a54 1aa7 1b05-1b33 1b45-1b4c 1b83-1ba0 "
    "1bae-1baf 1bba-1be5 1c00-1c23 1c4d-1c4f 1c5a-1c7d 1c80-1c8a 1c90-1cba 1cbd-1cbf 1ce9-1cec 1cee-1cf3 "
    "1cf5-1cf6 1cfa 1d00-1dbf 1e00-1f15 1f18-1f1d 1f20-1f45 1f48-1f4d 1f50-1f57 1f59 1f5b 1f5d 1f5f-1f7d "
    "1f80-1fb4 1fb6-1fbc 1fbe 1fc2-1fc4 1fc6-1fcc 1fd0-1fd3 1fd6-1fdb 1fe0-1fec 1ff2-1ff4 1ff6-1ffc 2071 207f "
    "2090-209c 2102 2107 210a-2113 2115 2119-211d 2124 2126 2128 212a-212d 212f-2139 213c-213f 2145-2149 214e "
    "2183-2184 2c00-2ce4 2ceb-2cee 2cf2-2cf3 2d00-2d25 2d27 2d2d 2d30-2d67 2d6f 2d80-2d96 2da0-2da6 2da8-2dae "
    "2db0-2db6 2db8-2dbe 2dc0-2dc6 2dc8-2dce 2dd0-2dd6 2dd8-2dde 2e2f 3005-3006 3031-3035 303b-303c 3041-3096 "
    "309d-309f 30a1-30fa 30fc-30ff 3105-312f 3131-318e 31a0-31bf 31f0-31ff 3400-4dbf 4e00-a48c a4d0-a4fd "
    "a500-a60c a610-a61f a62a-a62b a640-a66e a67f-a69d a6a0-a6e5 a717-a71f a722-a788 a78b-a7cd a7d0-a7d1 a7d3 "
    "a7d5-a7dc a7f2-a801 a803-a805 a807-a80a a80c-a822 a840-a873 a882-a8b3 a8f2-a8f7 a8fb a8fd-a8fe a90a-a925 "
    "a930-a946 a960-a97c a984-a9b2 a9cf a9e0-a9e4 a9e6-a9ef a9fa-a9fe aa00-aa28 aa40-aa42 aa44-aa4b aa60-aa76 "
    "aa7a aa7e-aaaf aab1 aab5-aab6 aab9-aabd aac0 aac2 aadb-aadd aae0-aaea aaf2-aaf4 ab01-ab06 ab09-ab0e "
    "ab11-ab16 ab20-ab26 ab28-ab2e ab30-ab5a ab5c-ab69 ab70-abe2 ac00-d7a3 d7b0-d7c6 d7cb-d7fb f900-fa6d "
    "fa70-fad9 fb00-fb06 fb13-fb17 fb1d fb1f-fb28 fb2a-fb36 fb38-fb3c fb3e fb40-fb41 fb43-fb44 fb46-fbb1 "
    "fbd3-fd3d fd50-fd8f fd92-fdc7 fdf0-fdfb fe70-fe74 fe76-fefc ff21-ff3a ff41-ff5a ff66-ffbe ffc2-ffc7 "
    "ffca-ffcf ffd2-ffd7 ffda-ffdc 10000-1000b 1000d-10026 10028-1003a 1003c-1003d 1003f-1004d 10050-1005d "
    "10080-100fa 10280-1029c 102a0-102d0 10300-1031f 1032d-10340 10342-10349 10350-10375 10380-1039d "
    "103a0-103c3 103c8-103cf 10400-1049d 104b0-104d3 104d8-104fb 10500-10527 10530-10563 10570-1057a "
    "1057c-1058a 1058c-10592 10594-10595 10597-105a1 105a3-105b1 105b3-105b9 105bb-105bc 105c0-105f3 "
    "10600-10736 10740-10755 10760-10767 10780-10785 10787-107b0 107b2-107ba 10800-10805 10808 1080a-10835 "
    "10837-10838 1083c 1083f-10855 10860-10876 10880-1089e 108e0-108f2 108f4-108f5 10900-10915 10920-10939 "
    "10980-109b7 109be-109bf 10a00 10a10-10a13 10a15-10a17 10a19-10a35 10a60-10a7c 10a80-10a9c 10ac0-10ac7 "
    "10ac9-10ae4 10b00-10b35 10b40-10b55 10b60-10b72 10b80-10b91 10c00-10c48 10c80-10cb2 10cc0-10cf2 "
    "10d00-10d23 10d4a-10d65 10d6f-10d85 10e80-10ea9 10eb0-10eb1 10ec2-10ec4 10f00-10f1c 10f27 10f30-10f45 "
    "10f70-10f81 10fb0-10fc4 10fe0-10ff6 11003-11037 11071-11072 11075 11083-110af 110d0-110e8 11103-11126 "
    "11144 11147 11150-11172 11176 11183-111b2 111c1-111c4 111da 111dc 11200-11211 11213-1122b 1123f-11240 "
    "11280-11286 11288 1128a-1128d 1128f-1129d 1129f-112a8 112b0-112de 11305-1130c 1130f-11310 11313-11328 "
    "1132a-11330 11332-11333 11335-11339 1133d 11350 1135d-11361 11380-11389 1138b 1138e 11390-113b5 113b7 "
    "113d1 113d3 11400-11434 11447-1144a 1145f-11461 11480-114af 114c4-114c5 114c7 11580-115ae 115d8-115db "
    "11600-1162f 11644 11680-116aa 116b8 11700-1171a 11740-11746 11800-1182b 118a0-118df 118ff-11906 11909 "
    "1190c-11913 11915-11916 11918-1192f 1193f 11941 119a0-119a7 119aa-119d0 119e1 119e3 11a00 11a0b-11a32 "
    "11a3a 11a50 11a5c-11a89 11a9d 11ab0-11af8 11bc0-11be0 11c00-11c08 11c0a-11c2e 11c40 11c72-11c8f "
    "11d00-11d06 11d08-11d09 11d0b-11d30 11d46 11d60-11d65 11d67-11d68 11d6a-11d89 11d98 11ee0-11ef2 11f02 "
    "11f04-11f10 11f12-11f33 11fb0 12000-12399 12480-12543 12f90-12ff0 13000-1342f 13441-13446 13460-143fa "
    "14400-14646 16100-1611d 16800-16a38 16a40-16a5e 16a70-16abe 16ad0-16aed 16b00-16b2f 16b40-16b43 "
    "16b63-16b77 16b7d-16b8f 16d40-16d6c 16e40-16e7f 16f00-16f4a 16f50 16f93-16f9f 16fe0-16fe1 16fe3 "
    "17000-187f7 18800-18cd5 18cff-18d08 1aff0-1aff3 1aff5-1affb 1affd-1affe 1b000-1b122 1b132 1b150-1b152 "
    "1b155 1b164-1b167 1b170-1b2fb 1bc00-1bc6a 1bc70-1bc7c 1bc80-1bc88 1bc90-1bc99 1d400-1d454 1d456-1d49c "
    "1d49e-1d49f 1d4a2 1d4a5-1d4a6 1d4a9-1d4ac 1d4ae-1d4b9 1d4bb 1d4bd-1d4c3 1d4c5-1d505 1d507-1d50a "
    "1d50d-1d514 1d516-1d51c 1d51e-1d539 1d53b-1d53e 1d540-1d544 1d546 1d54a-1d550 1d552-1d6a5 1d6a8-1d6c0 "
    "1d6c2-1d6da 1d6dc-1d6fa 1d6fc-1d714 1d716-1d734 1d736-1d74e 1d750-1d76e 1d770-1d788 1d78a-1d7a8 "
    "1d7aa-1d7c2 1d7c4-1d7cb 1df00-1df1e 1df25-1df2a 1e030-1e06d 1e100-1e12c 1e137-1e13d 1e14e 1e290-1e2ad "
    "1e2c0-1e2eb 1e4d0-1e4eb 1e5d0-1e5ed 1e5f0 1e7e0-1e7e6 1e7e8-1e7eb 1e7ed-1e7ee 1e7f0-1e7fe 1e800-1e8c4 "
    "1e900-1e943 1e94b 1ee00-1ee03 1ee05-1ee1f 1ee21-1ee22 1ee24 1ee27 1ee29-1ee32 1ee34-1ee37 1ee39 1ee3b "
    "1ee42 1ee47 1ee49 1ee4b 1ee4d-1ee4f 1ee51-1ee52 1ee54 1ee57 1ee59 1ee5b 1ee5d 1ee5f 1ee61-1ee62 1ee64 "
    "1ee67-1ee6a 1ee6c-1ee72 1ee74-1ee77 1ee79-1ee7c 1ee7e 1ee80-1ee89 1ee8b-1ee9b 1eea1-1eea3 1eea5-1eea9 "
    "1eeab-1eebb 20000-2a6df 2a700-2b739 2b740-2b81d 2b820-2cea1 2ceb0-2ebe0 2ebf0-2ee5d 2f800-2fa1d "
    "30000-3134a 31350-323af ")

_NUMBER = (
    "30-39 b2-b3 b9 bc-be 660-669 6f0-6f9 7c0-7c9 966-96f 9e6-9ef 9f4-9f9 a66-a6f ae6-aef b66-b6f b72-b77 "
    "be6-bf2 c66-c6f c78-c7e ce6-cef d58-d5e d66-d78 de6-def e50-e59 ed0-ed9 f20-f33 1040-1049 1090-1099 "
    "1369-137c 16ee-16f0 17e0-17e9 17f0-17f9 1810-1819 1946-194f 19d0-19da 1a80-1a89 1a90-1a99 1b50-1b59 "
    "1bb0-1bb9 1c40-1c49 1c50-1c59 2070 2074-2079 2080-2089 2150-2182 2185-2189 2460-249b 24ea-24ff 2776-2793 "
    "2cfd 3007 3021-3029 3038-303a 3192-3195 3220-3229 3248-324f 3251-325f 3280-3289 32b1-32bf a620-a629 "
    "a6e6-a6ef a830-a835 a8d0-a8d9 a900-a909 a9d0-a9d9 a9f0-a9f9 aa50-aa59 abf0-abf9 ff10-ff19 10107-10133 "
    "10140-10178 1018a-1018b 102e1-102fb 10320-10323 10341 1034a 103d1-103d5 104a0-104a9 10858-1085f "
    "10879-1087f 108a7-108af 108fb-108ff 10916-1091b 109bc-109bd 109c0-109cf 109d2-109ff 10a40-10a48 "
    "10a7d-10a7e 10a9d-10a9f 10aeb-10aef 10b58-10b5f 10b78-10b7f 10ba9-10baf 10cfa-10cff 10d30-10d39 "
    "10d40-10d49 10e60-10e7e 10f1d-10f26 10f51-10f54 10fc5-10fcb 11052-1106f 110f0-110f9 11136-1113f "
    "111d0-111d9 111e1-111f4 112f0-112f9 11450-11459 114d0-114d9 11650-11659 116c0-116c9 116d0-116e3 "
    "11730-1173b 118e0-118f2 11950-11959 11bf0-11bf9 11c50-11c6c 11d50-11d59 11da0-11da9 11f50-11f59 "
    "11fc0-11fd4 12400-1246e 16130-16139 16a60-16a69 16ac0-16ac9 16b50-16b59 16b5b-16b61 16d70-16d79 "
    "16e80-16e96 1ccf0-1ccf9 1d2c0-1d2d3 1d2e0-1d2f3 1d360-1d378 1d7ce-1d7ff 1e140-1e149 1e2f0-1e2f9 "
    "1e4f0-1e4f9 1e5f1-1e5fa 1e8c7-1e8cf 1e950-1e959 1ec71-1ecab 1ecad-1ecaf 1ecb1-1ecb4 1ed01-1ed2d "
    "1ed2f-1ed3d 1f100-1f10c 1fbf0-1fbf9 ")

_PUNCTUATION = (
    "21-23 25-2a 2c-2f 3a-3b 3f-40 5b-5d 5f 7b 7d a1 a7 ab b6-b7 bb bf 37e 387 55a-55f 589-58a 5be 5c0 5c3 "
    "5c6 5f3-5f4 609-60a 60c-60d 61b 61d-61f 66a-66d 6d4 700-70d 7f7-7f9 830-83e 85e 964-965 970 9fd a76 af0 "
    "c77 c84 df4 e4f e5a-e5b f04-f12 f14 f3a-f3d f85 fd0-fd4 fd9-fda 104a-104f 10fb 1360-1368 1400 166e "
    "169b-169c 16eb-16ed 1735-1736 17d4-17d6 17d8-17da 1800-180a 1944-1945 1a1e-1a1f 1aa0-1aa6 1aa8-1aad "
    "1b4e-1b4f 1b5a-1b60 1b7d-1b7f 1bfc-1bff 1c3b-1c3f 1c7e-1c7f 1cc0-1cc7 1cd3 2010-2027 2030-2043 2045-2051 "
    "2053-205e 207d-207e 208d-208e 2308-230b 2329-232a 2768-2775 27c5-27c6 27e6-27ef 2983-2998 29d8-29db "
    "29fc-29fd 2cf9-2cfc 2cfe-2cff 2d70 2e00-2e2e 2e30-2e4f 2e52-2e5d 3001-3003 3008-3011 3014-301f 3030 303d "
    "30a0 30fb a4fe-a4ff a60d-a60f a673 a67e a6f2-a6f7 a874-a877 a8ce-a8cf a8f8-a8fa a8fc a92e-a92f a95f "
    "a9c1-a9cd a9de-a9df aa5c-aa5f aade-aadf aaf0-aaf1 abeb fd3e-fd3f fe10-fe19 fe30-fe52 fe54-fe61 fe63 fe68 "
    "fe6a-fe6b ff01-ff03 ff05-ff0a ff0c-ff0f ff1a-ff1b ff1f-ff20 ff3b-ff3d ff3f ff5b ff5d ff5f-ff65 "
    "10100-10102 1039f 103d0 1056f 10857 1091f 1093f 10a50-10a58 10a7f 10af0-10af6 10b39-10b3f 10b99-10b9c "
    "10d6e 10ead 10f55-10f59 10f86-10f89 11047-1104d 110bb-110bc 110be-110c1 11140-11143 11174-11175 "
    "111c5-111c8 111cd 111db 111dd-111df 11238-1123d 112a9 113d4-113d5 113d7-113d8 1144b-1144f 1145a-1145b "
    "1145d 114c6 115c1-115d7 11641-11643 11660-1166c 116b9 1173c-1173e 1183b 11944-11946 119e2 11a3f-11a46 "
    "11a9a-11a9c 11a9e-11aa2 11b00-11b09 11be1 11c41-11c45 11c70-11c71 11ef7-11ef8 11f43-11f4f 11fff "
    "12470-12474 12ff1-12ff2 16a6e-16a6f 16af5 16b37-16b3b 16b44 16d6d-16d6f 16e97-16e9a 16fe2 1bc9f "
    "1da87-1da8b 1e5ff 1e95e-1e95f ")

_NUMERIC_EXTRA = (
    "11de0-11de9 16ff4-16ff6 ")
# Code points the library's normalizer gives a nonzero canonical combining class (its Unicode data is
# old: marks newer than Unicode 9 are starters to it), from tokenizers 0.23.3.
_COMBINING = (
    "300-34e 350-36f 483-487 591-5bd 5bf 5c1-5c2 5c4-5c5 5c7 610-61a 64b-65f 670 6d6-6dc 6df-6e4 6e7-6e8 "
    "6ea-6ed 711 730-74a 7eb-7f3 816-819 81b-823 825-827 829-82d 859-85b 8d4-8e1 8e3-8ff 93c 94d 951-954 9bc "
    "9cd a3c a4d abc acd b3c b4d bcd c4d c55-c56 cbc ccd d4d dca e38-e3a e48-e4b eb8-eb9 ec8-ecb f18-f19 f35 "
    "f37 f39 f71-f75 f7a-f7d f80-f84 f86-f87 fc6 1037 1039-103a 108d 135d-135f 1714 1734 17d2 17dd 18a9 "
    "1939-193b 1a17-1a18 1a60 1a75-1a7c 1a7f 1ab0-1abd 1b34 1b44 1b6b-1b73 1baa-1bab 1be6 1bf2-1bf3 1c37 "
    "1cd0-1cd2 1cd4-1ce0 1ce2-1ce8 1ced 1cf4 1cf8-1cf9 1dc0-1df5 1dfb-1dff 20d0-20dc 20e1 20e5-20f0 2cef-2cf1 "
    "2d7f 2de0-2dff 302a-302f 3099-309a a66f a674-a67d a69e-a69f a6f0-a6f1 a806 a8c4 a8e0-a8f1 a92b-a92d a953 "
    "a9b3 a9c0 aab0 aab2-aab4 aab7-aab8 aabe-aabf aac1 aaf6 abed fb1e fe20-fe2f 101fd 102e0 10376-1037a 10a0d "
    "10a0f 10a38-10a3a 10a3f 10ae5-10ae6 11046 1107f 110b9-110ba 11100-11102 11133-11134 11173 111c0 111ca "
    "11235-11236 112e9-112ea 1133c 1134d 11366-1136c 11370-11374 11442 11446 114c2-114c3 115bf-115c0 1163f "
    "116b6-116b7 1172b 11c3f 16af0-16af4 16b30-16b36 1bc9e 1d165-1d169 1d16d-1d172 1d17b-1d182 1d185-1d18b "
    "1d1aa-1d1ad 1d242-1d244 1e000-1e006 1e008-1e018 1e01b-1e021 1e023-1e024 1e026-1e02a 1e8d0-1e8d6 "
    "1e944-1e94a ")
# Unicode White_Space: \s of Oniguruma and of Rust's regex crate alike (not Python's: no U+001C..U+001F).
_WHITE_SPACE = "9-d 20 85 a0 1680 2000-200a 2028-2029 202f 205f 3000"

_TABLES = {"L": _LETTER, "N": _NUMBER, "P": _PUNCTUATION, "s": _WHITE_SPACE, "numeric": _NUMBER + _NUMERIC_EXTRA,
           "combining": _COMBINING}
_CONTROL_ESCAPES = {"r": "\r", "n": "\n", "t": "\t", "f": "\f", "v": "\v"}
# What Oniguruma's (?i:x) matches for an ASCII letter x beyond x and X (checked over every code point).
_CASE_FOLDS = {"s": "ſ", "k": "\u212a"}
# Letter pairs Oniguruma also matches as one character under (?i:...) ("ß", "ﬆ", "ﬀ", "ﬁ", "ﬂ").
_MULTI_CHAR_FOLDS = {"ss", "st", "ff", "fi", "fl"}
# Group openers accepted: (ignore case, lookaround). A plain "(" is a group too.
_GROUPS = {"(?:": (False, False), "(?i:": (True, False), "(?=": (False, True), "(?!": (False, True)}


@functools.cache
def ranges(name: str) -> tuple[tuple[int, int], ...]:
    """The sorted, merged code point ranges of class `name`: "L", "N", "P", "s", "numeric" or "combining"."""
    pairs = []
    for item in _TABLES[name].split():
        first, _, last = item.partition("-")
        pairs.append((int(first, 16), int(last or first, 16)))
    return merged(pairs)


def merged(pairs: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Ranges sorted, with overlapping and touching ones joined."""
    out: list[list[int]] = []
    for first, last in sorted(pairs):
        if out and first <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([first, last])
    return tuple((first, last) for first, last in out)


def complement(pairs: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """Every code point outside the (merged) ranges."""
    out, start = [], 0
    for first, last in pairs:
        if first > start:
            out.append((start, first - 1))
        start = last + 1
    if start <= MAX_CODE_POINT:
        out.append((start, MAX_CODE_POINT))
    return tuple(out)


def class_body(pairs: tuple[tuple[int, int], ...]) -> str:
    """The inside of a `re` character class matching exactly these ranges."""
    def char(code):
        c = chr(code)
        # escape all ASCII punctuation, so no "--", "&&" or "[" can read as a set operation
        return "\\" + c if c.isascii() and not c.isalnum() and c.isprintable() else c
    return "".join(char(a) if a == b else f"{char(a)}-{char(b)}" for a, b in pairs)


@functools.cache
def char_class(name: str) -> re.Pattern:
    """One character of class `name` (see `ranges`)."""
    return re.compile("[" + class_body(ranges(name)) + "]")


@functools.lru_cache(maxsize=64)
def translate(pattern: str) -> re.Pattern:
    """A compiled Python regex that finds exactly what Oniguruma finds for `pattern`; BackendError for
    syntax outside the subset described in the module docstring."""
    return _Translator(pattern).compile()


class _Translator:
    def __init__(self, pattern: str):
        self.pattern = pattern
        self.out: list[str] = []          # the Python regex
        self.bare: list[str] = []         # the same without lookarounds: can it match ""?
        self.groups: list[tuple[bool, bool]] = []     # per open group: (ignore case, lookaround)
        self.can_repeat = False           # the last thing emitted is an atom a quantifier may follow
        self.quantified = False           # the last thing emitted is a quantifier
        self.last_letter = ""             # the ASCII letter just emitted inside (?i:...)

    def refuse(self, why: str):
        raise unsupported(f"the regex {self.pattern!r} ({why})")

    def compile(self) -> re.Pattern:
        p, i = self.pattern, 0
        while i < len(p):
            c = p[i]
            if c == "\\":
                kind, value, i = self.escape(i)
                if kind == "set":
                    self.no_ignore_case("a class")
                    self.atom("[" + class_body(value) + "]")
                else:
                    self.literal(value)
            elif c == "[":
                self.no_ignore_case("a class")
                text, i = self.char_class(i)
                self.atom(text)
            elif c == "(":
                i = self.open_group(i)
            elif c == ")":
                if not self.groups:
                    self.refuse("unbalanced )")
                _, lookaround = self.groups.pop()
                self.emit(")", bare=not lookaround)
                self.can_repeat, self.quantified, self.last_letter = not lookaround, False, ""
            elif c == "|":
                self.emit("|")
                self.can_repeat, self.quantified, self.last_letter = False, False, ""
            elif c in "?*+{":
                i = self.quantifier(i)
                continue
            elif c in "^$":
                self.refuse("anchors match at line ends in Oniguruma")
            elif c == ".":
                self.atom(".")
            else:
                self.literal(c)
            if c not in "\\[(":
                i += 1
        if self.groups:
            self.refuse("unclosed (")
        try:
            compiled, bare = re.compile("".join(self.out)), re.compile("".join(self.bare))
        except re.error as exc:
            self.refuse(f"not valid as a Python regex: {exc}")
        if bare.fullmatch(""):
            # Python and Oniguruma step past empty matches differently; no tokenizer needs them
            self.refuse("it can match the empty string")
        return compiled

    def emit(self, text, bare=True):
        self.out.append(text)
        if bare and not any(lookaround for _, lookaround in self.groups):
            self.bare.append(text)

    def atom(self, text):
        self.emit(text)
        self.can_repeat, self.quantified, self.last_letter = True, False, ""

    def ignore_case(self) -> bool:
        return any(ignore for ignore, _ in self.groups)

    def no_ignore_case(self, what):
        if self.ignore_case():
            self.refuse(f"{what} inside (?i:...)")

    def literal(self, char):
        if not self.ignore_case():
            self.atom(re.escape(char))
            return
        if not char.isascii():
            self.refuse(f"the non-ASCII {char!r} inside (?i:...)")
        if not char.isalpha():
            self.atom(re.escape(char))
            return
        low = char.lower()
        if self.last_letter + low in _MULTI_CHAR_FOLDS:
            self.refuse(f"{self.last_letter + low!r} inside (?i:...) also matches a ligature in Oniguruma")
        self.atom("[" + low + low.upper() + _CASE_FOLDS.get(low, "") + "]")
        self.last_letter = low

    def open_group(self, i) -> int:
        p = self.pattern
        opener = next((o for o in _GROUPS if p.startswith(o, i)), None)
        if opener is None:
            if p.startswith("(?", i):
                self.refuse(f"the group {p[i:i + 4]!r}...")
            opener = "("
        ignore, lookaround = _GROUPS.get(opener, (False, False))
        self.emit("(?:" if opener in ("(", "(?i:") else opener, bare=not lookaround)
        self.groups.append((ignore or self.ignore_case(), lookaround))
        self.can_repeat, self.quantified, self.last_letter = False, False, ""
        return i + len(opener)

    def quantifier(self, i) -> int:
        p = self.pattern
        if p[i] == "{":
            match = re.compile(r"\{(\d+)(,(\d*))?\}").match(p, i)
            if match is None or (match.group(3) and int(match.group(3)) < int(match.group(1))):
                self.refuse(f"{p[i:i + 8]!r} is not a {{m}}, {{m,}} or {{m,n}} quantifier")
            text, end = match.group(0), match.end()
        else:
            text, end = p[i], i + 1
        if self.quantified and text == "?":                  # lazy, the same in both engines
            self.emit("?")
            self.quantified = False
            return end
        if self.quantified:
            self.refuse("possessive or stacked quantifiers")
        if not self.can_repeat:
            self.refuse(f"nothing to repeat before {text!r}")
        self.emit(text)
        self.can_repeat, self.quantified = False, True
        return end

    def escape(self, i) -> tuple[str, object, int]:
        """("set", ranges, end) for \\s \\S \\p{..} \\P{..}; ("char", character, end) for the rest."""
        p = self.pattern
        if i + 1 >= len(p):
            self.refuse("a trailing backslash")
        c = p[i + 1]
        if c in "pP":
            match = re.compile(r"\{([A-Za-z]+)\}").match(p, i + 2)
            if match is None or match.group(1) not in ("L", "N", "P"):
                self.refuse(f"the property {p[i:i + 12]!r}...: only \\p{{L}}, \\p{{N}} and \\p{{P}} are known")
            pairs = ranges(match.group(1))
            return "set", complement(pairs) if c == "P" else pairs, match.end()
        if c in "sS":
            return "set", complement(ranges("s")) if c == "S" else ranges("s"), i + 2
        if c in _CONTROL_ESCAPES:
            return "char", _CONTROL_ESCAPES[c], i + 2
        if c.isascii() and not c.isalnum():
            return "char", c, i + 2
        self.refuse(f"the escape \\{c}")

    def char_class(self, i) -> tuple[str, int]:
        p, i = self.pattern, i + 1
        negated = p.startswith("^", i)
        i += negated
        pairs: list[tuple[int, int]] = []
        first = True
        while True:
            if i >= len(p):
                self.refuse("an unclosed [")
            c = p[i]
            if c == "]" and not first:
                break
            if c in "[]" or p.startswith("&&", i):
                self.refuse("nested classes, set operations or a leading ]")
            first = False
            if c == "\\":
                kind, value, i = self.escape(i)
                if kind == "set":
                    if p.startswith("-", i) and not p.startswith("-]", i):
                        self.refuse("a range from a class")
                    pairs.extend(value)
                    continue
                start = value
            else:
                start, i = c, i + 1
            if p.startswith("-", i) and i + 1 < len(p) and p[i + 1] != "]":
                if p[i + 1] == "\\":
                    kind, end, i = self.escape(i + 1)
                    if kind == "set":
                        self.refuse("a range to a class")
                elif p[i + 1] == "[":
                    self.refuse("a range to a class")
                else:
                    end, i = p[i + 1], i + 2
                if ord(end) < ord(start):
                    self.refuse(f"the reversed range {start!r}-{end!r}")
                pairs.append((ord(start), ord(end)))
            else:
                pairs.append((ord(start), ord(start)))
        return ("[^" if negated else "[") + class_body(merged(pairs)) + "]", i + 1
