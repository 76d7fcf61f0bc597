/// RFC 8448, section 3 ("Simple 1-RTT Handshake", TLS_AES_128_GCM_SHA256): the traffic secrets,
/// keys and IVs, and the records protected with the application traffic keys (the server's
/// NewSessionTicket, data and close_notify at sequence 0, 1, 2; the client's data and
/// close_notify at 0, 1).
enum RFC8448 {
    static let serverApSecret =
        "a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643"
    static let clientApSecret =
        "9e40646ce79a7f9dc05af8889bce6552875afa0b06df0087f792ebb7c17504a5"
    static let serverApKey =
        "9f02283b6c9c07efc26bb9f2ac92e356"
    static let serverApIv =
        "cf782b88dd83549aadf1e984"
    static let clientApKey =
        "17422dda596ed5d9acd890e3c63f5051"
    static let clientApIv =
        "5b78923dee08579033e523d9"
    static let serverHsSecret =
        "b67b7d690cc16c4e75e54213cb2d37b4e9c912bcded9105d42befd59d391ad38"
    static let serverHsKey =
        "3fce516009c21727d0f2e4e86ee403bc"
    static let serverHsIv =
        "5d313eb2671276ee13000b30"
    static let newSessionTicketPayload =
        "040000c90000001efad6aac502000000b22c035d829359ee5ff7af4ec900000000262a6494dc486d"
        + "2c8a34cb33fa90bf1b0070ad3c498883c9367c09a2be785abc55cd226097a3a982117283f82a03a1"
        + "43efd3ff5dd36d64e861be7fd61d2827db279cce145077d454a3664d4e6da4d29ee03725a6a4dafc"
        + "d0fc67d2aea70529513e3da2677fa5906c5b3f7d8f92f228bda40dda721470f9fbf297b5aea61764"
        + "6fac5c03272e970727c621a79141ef5f7de6505e5bfbc388e93343694093934ae4d3570008002a00" + "0400000400"
    static let newSessionTicketRecord =
        "17030300de3a6b8f90414a97d6959c3487680de5134a2b240e6cffac116e95d41d6af8f6b580dcf3"
        + "d11d63c758db289a015940252f55713e061dc13e078891a38efbcf5753ad8ef170ad3c7353d16d9d"
        + "a773b9ca7f2b9fa1b6c0d4a3d03f75e09c30ba1e62972ac46f75f7b981be63439b2999ce13064615"
        + "139891d5e4c5b406f16e3fc181a77ca475840025db2f0a77f81b5ab05b94c01346755f69232c8651"
        + "9d86cbeeac87aac347d143f9605d64f650db4d023e70e952ca49fe5137121c74bc2697687e248746"
        + "d6df353005f3bce18696129c8153556b3b6c6779b37bf15985684f"
    static let clientAppDataRecord =
        "1703030043a23f7054b62c94d0affafe8228ba55cbefacea42f914aa66bcab3f2b9819a8a5b46b39"
        + "5bd54a9a20441e2b62974e1f5a6292a2977014bd1e3deae63aeebb21694915e4"
    static let serverAppDataRecord =
        "17030300432e937e11ef4ac740e538ad36005fc4a46932fc3225d05f82aa1b36e30efaf97d90e6df"
        + "fc602dcb501a59a8fcc49c4bf2e5f0a21c0047c2abf332540dd032e167c2955d"
    static let clientAlertRecord =
        "1703030013c9872760655666b74d7ff1153efd6db6d0b0e3"
    static let serverAlertRecord =
        "1703030013b58fd67166ebf599d24720cfbe7efa7a8864a9"
}
